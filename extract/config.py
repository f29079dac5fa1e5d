"""Options declared once: a dataclass per command (``FinetuneConfig``...) holds each option's default and the
values it accepts; the command line takes its defaults and choices from it, and the command line and the
Python API check their options against it before torch loads (scikit-learn's parameter constraints are the
model). A constraint that several commands share is named, not copied: it lives in extract/checks.py.
Torch-free."""
from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any, Callable

from .checks import CONSTRAINTS, require, whole, within  # noqa: F401  (whole, within: for the configs)


def option(default: Any, accepts: Callable[[Any], bool] | str | None = None, what: str = "",
           choices: tuple | None = None, check: Callable[[Any], Any] | None = None, optional: bool = False) -> Any:
    """A config field: its default and what it accepts: a predicate ``accepts`` described by ``what``, the
    name of a shared constraint (``accepts="C"``: extract.checks.CONSTRAINTS), ``choices`` (also argparse's),
    or ``check`` (raises its own UsageError). None is accepted when the default is None or ``optional`` (the
    library then decides)."""
    if isinstance(accepts, str):
        accepts, what = CONSTRAINTS[accepts]
    elif accepts is None and check is None and choices is not None:
        accepts, what = (lambda v: v in choices), f"one of {', '.join(map(str, choices))}"
    return field(default=default, metadata={"accepts": accepts, "what": what, "choices": choices, "check": check,
                                            "optional": optional or default is None})


def defaults(config: type) -> dict[str, Any]:
    """Every option of ``config`` with its default."""
    return {f.name: f.default for f in fields(config)}


def choices(config: type, name: str) -> tuple | None:
    """The declared choices of option ``name`` (for argparse's ``choices=``)."""
    return _field(config, name).metadata["choices"]


def constraint(config: type, name: str) -> tuple[Callable[[Any], bool], str]:
    """Option ``name``'s declared (accepts, what): for the command line's argparse ``type=``."""
    meta = _field(config, name).metadata
    return meta["accepts"], meta["what"]


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
        if meta["accepts"] is not None:
            require(name, value, meta["accepts"], meta["what"])


def _field(config: type, name: str) -> Field:
    return next(f for f in fields(config) if f.name == name)
