"""finetune's options declared once: ``FinetuneConfig`` holds each option's default and allowed values.

The command line takes its defaults and choices from it; the command line and the Python API
(``finetune_images``, ``cnncodes.finetune``) both call ``check_options``, so a bad value fails in one
line at once, not after seconds of imports.
"""
from __future__ import annotations

from dataclasses import dataclass

from cnncodes.extract.config import check_config, option, whole, within
from cnncodes.extract.device import PRECISIONS, check_precision
from cnncodes.extract.names import check_backbone

OPTIMIZERS = ("sgd", "adamw")
SAMPLING = ("none", "over", "under")


@dataclass(frozen=True)
class FinetuneConfig:
    """The options of `cnncodes finetune` / ``finetune_images`` (``progress`` is the command line's --quiet,
    inverted); ``freeze`` None means: ``freeze_until`` decides; ``epochs`` None: sized by the step budget
    (finetune.budget.step_sized_epochs)."""

    backbone: str = option("mobilenet_v2", check=check_backbone)
    weights: str | None = option(None)
    freeze: float | None = option(1 / 3, within(0, 1, closed_high=True), "between 0 and 1 (1 = linear probe)",
                                  optional=True)
    freeze_until: str | None = option(None)
    epochs: int | None = option(None, whole(1), "a whole number >= 1")
    lp_epochs: int = option(0, whole(0), "a whole number >= 0")
    batch_size: int = option(32, whole(1), "a whole number >= 1")
    lr: float = option(0.01, lambda v: v > 0, "positive")
    backbone_lr_mult: float = option(0.1, lambda v: v >= 0, ">= 0")
    weight_decay: float = option(1e-4, lambda v: v >= 0, ">= 0")
    warmup_epochs: float = option(1.0, lambda v: v >= 0, ">= 0")
    label_smoothing: float = option(0.1, within(0, 1), "in [0, 1)")
    optimizer: str = option("sgd", choices=OPTIMIZERS)
    momentum: float = option(0.9, within(0, 1), "in [0, 1)")
    class_weight: str | dict | None = option("balanced")
    sampling: str = option("none", choices=SAMPLING)
    train_bn: bool = option(False)
    augment: bool = option(True)
    val_fraction: float = option(0.0, within(0, 1), "in [0, 1)")
    test_fraction: float | None = option(None, "test_fraction")
    patience: int | None = option(None, whole(1), "a whole number >= 1")
    seed: int = option(0)
    device: str = option("auto")
    precision: str = option("auto", choices=PRECISIONS, check=check_precision)
    threads: int | None = option(None, whole(1), "a whole number >= 1")
    workers: int | None = option(None, whole(0), "a whole number >= 0")
    progress: bool = option(True)
    resize: int | None = option(None, whole(8), "a whole number >= 8")
    crop: int | None = option(None, whole(8), "a whole number >= 8")
    max_train_images: int | None = option(None, whole(2), "a whole number >= 2")
    overwrite: bool = option(False)
    path_column: str | None = option(None)
    label_column: str | None = option(None)
    split_column: str | None = option(None)


def check_options(options: dict) -> None:
    """Raise UsageError naming the first option of ``options`` outside its allowed values."""
    check_config(FinetuneConfig, options)
