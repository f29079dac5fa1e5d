"""Fine-tune a backbone with a new head on images (transfer-learning scenarios 2 and 4).

Names are imported when first used (PEP 562), so that ``finetune.options`` checks options without
loading torch.
"""
import sys
from importlib import import_module

from cnncodes import CallablePackage

_WHERE = {"finetune_images": "train", "FinetuneInterrupted": "trainer", "MODEL_FILE": "train",
          "BACKBONE_FILE": "train", "predict_images": "predict", "is_finetuned_run": "predict"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'finetune' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)


sys.modules[__name__].__class__ = CallablePackage  # cnncodes.finetune(...) is also the API function
