"""Extract stage: images -> ReLU'd CNN codes in a self-describing HDF5 file."""
import os
from importlib.metadata import PackageNotFoundError, version

# Before torch loads (see pipeline.py): OpenMP threads sleep instead of spinning while they wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("cnncodes")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0"

from .backbones import BACKBONES, DEFAULT_BACKBONE, get_backbone  # noqa: E402
from .codesfile import CodesFile, RecipeMismatch, open_codes  # noqa: E402
from .runner import ExtractionError, ExtractionInterrupted, ExtractResult, extract_codes  # noqa: E402
from .weights import WeightsNotFound  # noqa: E402

__all__ = [
    "BACKBONES", "DEFAULT_BACKBONE", "get_backbone", "CodesFile", "RecipeMismatch", "open_codes",
    "ExtractionError", "ExtractionInterrupted", "ExtractResult", "extract_codes", "WeightsNotFound",
]
