"""Extract stage: images -> ReLU'd CNN codes in a self-describing HDF5 file.

Names are imported when first used (PEP 562), so that reading codes files (``extract.codesfile``,
``open_codes``) never loads torch.
"""
from cnncodes import lazy_names

_WHERE = {
    "BACKBONES": "backbones", "DEFAULT_BACKBONE": "backbones", "get_backbone": "backbones",
    "CodesFile": "codesfile", "RecipeMismatch": "codesfile", "open_codes": "codesfile",
    "ExtractionError": "errors", "ExtractionInterrupted": "errors",
    "ExtractResult": "runner", "extract_codes": "runner", "WeightsNotFound": "weights",
}
__all__ = list(_WHERE)

__getattr__ = lazy_names(__name__, _WHERE)
