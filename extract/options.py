"""extract's options declared once: ``ExtractConfig`` holds each option's default and allowed values.

The command line (extract, run) takes its defaults and choices from it; the command line and the Python
API (``cnncodes.extract_codes``) check options against it before torch loads. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

from .checks import DTYPES
from .config import check_config, option, whole
from .device import PRECISIONS, check_precision
from .names import check_backbone

POOLS = ("avg", "max", "none")
VIEWS = (1, 2, 10)  # crops averaged per image: center; + its flip; TenCrop (images.views_of)
MAX_UNPOOLED_DIM = 65536  # --pool none keeps whole conv maps; codes wider than this are refused unless raised


@dataclass(frozen=True)
class ExtractConfig:
    """The options of `cnncodes extract` / ``extract_codes`` (``progress`` is the command line's --quiet,
    inverted; ``layers`` the taps its --layer values name)."""

    backbone: str = option("mobilenet_v2", check=check_backbone)
    layers: tuple[str, ...] = option(("penultimate",))
    pool: str = option("avg", choices=POOLS)
    weights: str | None = option(None)
    device: str = option("auto")
    precision: str = option("auto", choices=PRECISIONS, check=check_precision)
    batch_size: int | None = option(None, whole(1), "a whole number >= 1")
    workers: int | None = option(None, whole(0), "a whole number >= 0")
    part_size: int | None = option(None, whole(1), "a whole number >= 1")
    resize: int | None = option(None, whole(1), "a whole number >= 1")
    crop: int | None = option(None, whole(1), "a whole number >= 1")
    views: int = option(1, choices=VIEWS)
    dtype: str = option("float32", "dtype", choices=DTYPES)
    overwrite: bool = option(False)
    update: bool = option(False)
    progress: bool = option(True)
    max_dim: int = option(MAX_UNPOOLED_DIM, whole(1), "a whole number >= 1")
    path_column: str | None = option(None)
    label_column: str | None = option(None)
    split_column: str | None = option(None)


def check_options(options: dict) -> None:
    """Raise UsageError naming the first option of ``options`` outside its allowed values."""
    check_config(ExtractConfig, options)
