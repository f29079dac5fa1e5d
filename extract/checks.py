"""The constraints that several commands share, declared once: the command line's argparse types and the Python
API's boundary checks both read them (torch- and scikit-learn-free, so that they run before any long work)."""
from __future__ import annotations

import math
from typing import Any, Callable

from .errors import UsageError

DTYPES = ("float32", "float16")  # stored code types
SHARD_FORMAT = "R/N with 0 <= R < N"

# option: (accepts the value, what the value must be)
CONSTRAINTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "C": (lambda v: 0 < v < math.inf, "a positive number"),
    "cv": (lambda v: v == 0 or v >= 2, "0 (no cross-validation) or at least 2 folds"),
    "test_fraction": (lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)"),
    "dtype": (lambda v: v in DTYPES, " or ".join(DTYPES)),
    "shard": (lambda v: 0 <= v[0] < v[1], SHARD_FORMAT),
}


def check(name: str, value):
    """``value`` if it meets ``name``'s constraint (None, the default, passes), else a UsageError in one line."""
    if value is None:
        return value
    accepts, what = CONSTRAINTS[name]
    try:
        ok = bool(accepts(value))
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        shown = "/".join(map(str, value)) if name == "shard" and isinstance(value, tuple) else repr(value)
        raise UsageError(f"--{name.replace('_', '-')} must be {what}, got {shown}")
    return value
