"""finetune's options: their allowed values declared once, and checked before torch loads.

The command line and the Python API (``finetune_images``, ``cnncodes.finetune``) both call
``check_options``, so a bad value fails in one line at once, not after seconds of imports.
"""
from __future__ import annotations

from typing import Callable

from extract.checks import CONSTRAINTS as SHARED
from extract.device import PRECISIONS
from extract.errors import UsageError
from extract.names import check_backbone

OPTIMIZERS = ("sgd", "adamw")
SAMPLING = ("none", "over", "under")


def _whole(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _within(low: float, high: float, closed_high: bool = False) -> Callable[[float], bool]:
    return lambda v: low <= v <= high if closed_high else low <= v < high


# option: (accepts the value, what the value must be)
CONSTRAINTS: dict[str, tuple[Callable, str]] = {
    "freeze": (_within(0, 1, closed_high=True), "between 0 and 1 (1 = linear probe)"),
    "epochs": (_whole(1), "a whole number >= 1"),
    "lp_epochs": (_whole(0), "a whole number >= 0"),
    "batch_size": (_whole(1), "a whole number >= 1"),
    "lr": (lambda v: v > 0, "positive"),
    "backbone_lr_mult": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (_within(0, 1), "in [0, 1)"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "momentum": (_within(0, 1), "in [0, 1)"),
    "sampling": (lambda v: v in SAMPLING, f"one of {', '.join(SAMPLING)}"),
    "val_fraction": (_within(0, 1), "in [0, 1)"),
    "test_fraction": SHARED["test_fraction"],
    "patience": (_whole(1), "a whole number >= 1"),
    "resize": (_whole(8), "a whole number >= 8"),
    "crop": (_whole(8), "a whole number >= 8"),
    "max_train_images": (_whole(2), "a whole number >= 2"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
}
OPTIONAL = {"freeze", "test_fraction", "patience", "resize", "crop", "max_train_images"}  # None: the default


def check_options(options: dict) -> None:
    """Raise UsageError naming the first option of ``options`` outside its allowed values."""
    if "backbone" in options:
        check_backbone(options["backbone"])
    for name, (accepts, what) in CONSTRAINTS.items():
        if name not in options or (options[name] is None and name in OPTIONAL):
            continue
        value = options[name]
        try:
            ok = value is not None and bool(accepts(value))
        except TypeError:  # a string where a number belongs
            ok = False
        if not ok:
            raise UsageError(f"--{name.replace('_', '-')} must be {what}, not {value!r}")
