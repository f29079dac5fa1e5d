"""The constraints that several commands share, declared once, and the one message a refused value gets: the
configs' options (extract/config.py) name them, and the command line's argparse types and the boundary checks
(shards, runner, datasets, classify) read them (torch- and scikit-learn-free, so that they run before any long
work)."""
from __future__ import annotations

import math
from typing import Any, Callable

from .errors import UsageError

DTYPES = ("float32", "float16")  # stored code types
SHARD_FORMAT = "R/N with 0 <= R < N"


def whole(low: int) -> Callable[[Any], bool]:
    """Accepts whole numbers (not booleans) of at least ``low``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def within(low: float, high: float, closed_high: bool = False) -> Callable[[float], bool]:
    """Accepts numbers in [low, high), or [low, high] when ``closed_high``."""
    return lambda v: low <= v <= high if closed_high else low <= v < high


# option: (accepts the value, what the value must be)
CONSTRAINTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "C": (lambda v: 0 < v < math.inf, "a positive number"),
    "cv": (lambda v: int(v) == v and (v == 0 or v >= 2), "0 (no cross-validation) or at least 2 folds"),
    "test_fraction": (lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)"),
    "dtype": (lambda v: v in DTYPES, " or ".join(DTYPES)),
    "shard": (lambda v: 0 <= v[0] < v[1], SHARD_FORMAT),
}


def check(name: str, value):
    """``value`` if it meets ``name``'s shared constraint (None, the default, passes), else a UsageError."""
    if value is not None:
        require(name, value, *CONSTRAINTS[name])
    return value


def require(name: str, value, accepts: Callable[[Any], bool], what: str) -> None:
    """The one refusal of every declared constraint: ``--name must be WHAT, got VALUE`` in one line."""
    try:
        ok = value is not None and bool(accepts(value))
    except (TypeError, ValueError, IndexError):  # a string where a number belongs
        ok = False
    if not ok:
        shown = "/".join(map(str, value)) if name == "shard" and isinstance(value, tuple) else repr(value)
        raise UsageError(f"--{name.replace('_', '-')} must be {what}, got {shown}")
