"""Fine-tune a backbone with a new head on images (transfer-learning scenarios 2 and 4).

Names are imported when first used (PEP 562), so that ``finetune.options`` checks options without
loading torch.
"""
import sys

from cnncodes import CallablePackage, lazy_names

_WHERE = {"finetune_images": "train", "FinetuneInterrupted": "trainer", "MODEL_FILE": "train",
          "BACKBONE_FILE": "train", "predict_images": "predict", "is_finetuned_run": "predict"}
__all__ = list(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)


sys.modules[__name__].__class__ = CallablePackage  # cnncodes.finetune(...) is also the API function
