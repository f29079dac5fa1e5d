"""Extract stage: images -> ReLU'd CNN codes in a self-describing HDF5 file.

Names are imported when first used (PEP 562), so that reading codes files (``extract.codesfile``,
``open_codes``) never loads torch.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnncodes")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0"

_WHERE = {
    "BACKBONES": "backbones", "DEFAULT_BACKBONE": "backbones", "get_backbone": "backbones",
    "CodesFile": "codesfile", "RecipeMismatch": "codesfile", "open_codes": "codesfile",
    "ExtractionError": "errors", "ExtractionInterrupted": "errors",
    "ExtractResult": "runner", "extract_codes": "runner", "WeightsNotFound": "weights",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'extract' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
