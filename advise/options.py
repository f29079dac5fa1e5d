"""advise's options declared once: ``AdviseConfig`` holds each option's default and allowed values.

The command line takes its defaults from it; the command line and the Python API (``advise_images``,
``cnncodes.advise``) check options against it, before torch loads where they can. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

from cnncodes.extract.config import check_config, option, whole
from cnncodes.extract.device import PRECISIONS, check_precision
from cnncodes.extract.names import check_backbone

DEFAULT_SAMPLE = 500
MIN_SAMPLE = 10


@dataclass(frozen=True)
class AdviseConfig:
    """The options of `cnncodes advise` / ``advise_images`` (``progress`` is the command line's --quiet,
    inverted; ``out_dir`` its --out)."""

    backbone: str = option("mobilenet_v2", check=check_backbone)
    weights: str | None = option(None)
    sample: int = option(DEFAULT_SAMPLE, whole(MIN_SAMPLE), f"a whole number of at least {MIN_SAMPLE}")
    seed: int = option(0)
    resize: int | None = option(None, whole(1), "a whole number >= 1")
    crop: int | None = option(None, whole(1), "a whole number >= 1")
    device: str = option("auto")
    precision: str = option("auto", choices=PRECISIONS, check=check_precision)
    batch_size: int | None = option(None, whole(1), "a whole number >= 1")
    workers: int | None = option(None, whole(0), "a whole number >= 0")
    try_options: bool = option(False)
    out_dir: str | None = option(None)
    progress: bool = option(True)
    path_column: str | None = option(None)
    label_column: str | None = option(None)
    split_column: str | None = option(None)
    overwrite: bool = option(False)


def check_options(options: dict) -> None:
    """Raise UsageError naming the first option of ``options`` outside its allowed values."""
    check_config(AdviseConfig, options)
