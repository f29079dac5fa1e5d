"""Classify cached CNN codes: train, compare, evaluate and predict with scikit-learn.

Names are imported when first used (PEP 562), so that the command line builds its parser without
scikit-learn. ``classify.compare`` is the function, also once its module of the same name is imported.
"""
import sys
from types import ModuleType

from cnncodes import lazy_names

_WHERE = {"classify_codes": "train", "compare": "compare", "load_model": "model_io", "predict_codes": "predict",
          "summarize": "render", "CLASSIFIERS": "models", "DEFAULT_NORMALIZE": "options"}
__all__ = list(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)


class _Package(ModuleType):
    """Keeps the function ``compare`` when the import system binds the submodule ``classify.compare`` here."""

    def __setattr__(self, name: str, value) -> None:
        if name == "compare" and isinstance(value, ModuleType):
            value = value.compare
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
