"""auto's plan: the time budget (Clock, parse_budget), the candidate kinds and the candidates in the order
they run (plan_candidates).

Apart from advise.auto (the run) so that the command line checks --budget and --candidates without it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from cnncodes.extract.errors import UsageError

from .scenario import FREEZE_LARGE_DIFFERENT, FREEZE_LARGE_SIMILAR, FREEZE_SMALL_DIFFERENT

DEFAULT_BUDGET = "15m"
KINDS = ("codes", "finetune")
CODES_CLASSIFIERS = ("svm", "softmax")
FREEZE_LADDER = (FREEZE_LARGE_SIMILAR, FREEZE_SMALL_DIFFERENT, FREEZE_LARGE_DIFFERENT)  # cheapest first


@dataclass(frozen=True)
class Candidate:
    """One option to score: a codes classifier on ``layers`` or a fine-tune at ``freeze``."""

    name: str
    kind: str
    cost: tuple  # lower is cheaper: codes first (in plan order), then fine-tunes training the fewest units
    layers: tuple[str, ...] = ()
    classifier: str | None = None
    freeze: float | None = None


@dataclass
class Clock:
    """The time budget: seconds from the start of the call."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def used(self) -> float:
        return time.monotonic() - self.started


def parse_budget(text: str | float) -> float:
    """``"15m"``, ``"90s"``, ``"1h30m"`` or a number of seconds -> seconds (> 0); UsageError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*(?:(\d+(?:\.\d*)?)s?)?\s*",
                             str(text).lower())
        if not parts or not any(parts.groups()):
            raise UsageError(f"--budget must be a duration such as 15m, 90s or 1h30m, not {text!r}")
        h, m, s = (float(g or 0) for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not 0 < seconds < float("inf"):
        raise UsageError(f"--budget must be a positive duration, not {text!r}")
    return seconds


def parse_kinds(candidates: str | tuple | list) -> tuple[str, ...]:
    """``"codes,finetune"`` (or a list) -> the candidate kinds to try; UsageError for an unknown one."""
    kinds = [k.strip() for k in (candidates.split(",") if isinstance(candidates, str) else candidates) if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UsageError(f"--candidates must be {' or '.join(KINDS)} or both comma-separated, not {candidates!r}")
    return tuple(dict.fromkeys(kinds))


def plan_candidates(advice: dict, kinds: tuple[str, ...]) -> list[Candidate]:
    """The candidates in the order they run: codes classifiers (top layer, best earlier layer, both), then
    fine-tunes at the advice's freeze and its neighbours on FREEZE_LADDER."""
    from .evidence import TOP_LAYER
    from .trial import TRY_FREEZE

    plan = []
    if "codes" in kinds:
        early = advice["evidence"].get("best_early_layer")
        layer_sets = [(TOP_LAYER,)] + ([(early,), (early, TOP_LAYER)] if early else [])
        for layers in layer_sets:
            for clf in CODES_CLASSIFIERS:
                plan.append(Candidate(f"codes-{'+'.join(layers)}-{clf}", "codes", (0, len(plan)), layers, clf))
    if "finetune" in kinds:
        at = FREEZE_LADDER.index(TRY_FREEZE[advice["scenario"]])
        for i in [at] + [j for j in (at - 1, at + 1) if 0 <= j < len(FREEZE_LADDER)]:
            freeze = FREEZE_LADDER[i]
            plan.append(Candidate(f"finetune-{freeze:g}", "finetune", (1, i), freeze=freeze))
    return plan
