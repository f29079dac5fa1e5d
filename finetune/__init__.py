"""Fine-tune a backbone with a new head on images (transfer-learning scenarios 2 and 4)."""
from .predict import is_finetuned_run, predict_images
from .train import BACKBONE_FILE, MODEL_FILE, FinetuneInterrupted, finetune_images

__all__ = ["finetune_images", "predict_images", "is_finetuned_run", "FinetuneInterrupted", "MODEL_FILE",
           "BACKBONE_FILE"]
