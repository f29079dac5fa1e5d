"""Fine-tune a backbone with a new head on images (transfer-learning scenarios 2 and 4)."""
import os

# Before torch loads (see pipeline.py): OpenMP threads that sleep instead of spinning while they wait;
# spinning threads starve everything else on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .predict import is_finetuned_run, predict_images  # noqa: E402
from .train import BACKBONE_FILE, MODEL_FILE, FinetuneInterrupted, finetune_images  # noqa: E402

__all__ = ["finetune_images", "predict_images", "is_finetuned_run", "FinetuneInterrupted", "MODEL_FILE",
           "BACKBONE_FILE"]
