"""Options declared once: a dataclass per command (``FinetuneConfig``...) holds each option's default and the
values it accepts; the command line takes its defaults and choices from it, and the command line and the
Python API check their options against it before torch loads (scikit-learn's parameter constraints are the
model). Torch-free."""
from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any, Callable

from .errors import UsageError


def option(default: Any, accepts: Callable[[Any], bool] | None = None, what: str = "",
           choices: tuple | None = None, check: Callable[[Any], Any] | None = None, optional: bool = False) -> Any:
    """A config field: its default and what it accepts: ``choices``, a predicate ``accepts`` described by
    ``what``, or ``check`` (raises its own UsageError). None is accepted when the default is None or
    ``optional`` (the library then decides)."""
    if choices is not None:
        accepts, what = (lambda v: v in choices), f"one of {', '.join(choices)}"
    return field(default=default, metadata={"accepts": accepts, "what": what, "choices": choices, "check": check,
                                            "optional": optional or default is None})


def whole(low: int) -> Callable[[Any], bool]:
    """Accepts whole numbers (not booleans) of at least ``low``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def within(low: float, high: float, closed_high: bool = False) -> Callable[[float], bool]:
    """Accepts numbers in [low, high), or [low, high] when ``closed_high``."""
    return lambda v: low <= v <= high if closed_high else low <= v < high


def defaults(config: type) -> dict[str, Any]:
    """Every option of ``config`` with its default."""
    return {f.name: f.default for f in fields(config)}


def choices(config: type, name: str) -> tuple | None:
    """The declared choices of option ``name`` (for argparse's ``choices=``)."""
    return _field(config, name).metadata["choices"]


def from_args(config: type, args) -> dict[str, Any]:
    """The options of ``config`` taken from parsed command-line ``args`` of the same names (``progress``: not
    ``--quiet``)."""
    given = vars(args)
    options = {name: given[name] for name in defaults(config) if name in given}
    if "progress" in defaults(config) and "quiet" in given:
        options["progress"] = not given["quiet"]
    return options


def check_config(config: type, options: dict[str, Any]) -> None:
    """Raise UsageError naming the first option of ``options`` that ``config`` does not accept; names
    ``config`` does not declare are left to the callee."""
    declared = {f.name: f for f in fields(config)}
    for name, value in options.items():
        meta = declared[name].metadata if name in declared else {}
        if not meta or (value is None and meta["optional"]):
            continue
        if meta["check"] is not None:
            meta["check"](value)
        if meta["accepts"] is not None and not _accepts(meta["accepts"], value):
            raise UsageError(f"--{name.replace('_', '-')} must be {meta['what']}, not {value!r}")


def _accepts(accepts: Callable[[Any], bool], value: Any) -> bool:
    try:
        return value is not None and bool(accepts(value))
    except TypeError:  # a string where a number belongs
        return False


def _field(config: type, name: str) -> Field:
    return next(f for f in fields(config) if f.name == name)
