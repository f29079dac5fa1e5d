"""classify's and compare's options declared once: ``ClassifyConfig`` and ``CompareConfig`` hold each
option's default and allowed values.

The command line takes its defaults and choices from them (C, cv and test_fraction name the shared
constraints of extract/checks.py); ``check_options`` is the one check of those values, used by the command line, the trainers (in memory or streamed) and the estimators' builders.
scikit-learn-free, so that a bad value fails before anything heavy loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from cnncodes.extract.config import check_config, option, whole
from cnncodes.extract.errors import UsageError

CLASSIFIER_NAMES = ("svm", "softmax", "knn", "rbf_svm", "forest")  # classify.models.CLASSIFIERS' keys
NORMALIZE = ("power", "l2", "standard", "none")
DEFAULT_NORMALIZE = "power"
SAMPLING = ("none", "over", "under", "hybrid")
DEFAULT_CLASSIFIERS = ("svm", "softmax", "knn", "rbf_svm")  # what compare runs by default


def _known(kind: str, names: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in names:
            raise UsageError(f"unknown {kind} {value!r}; choose one of {', '.join(names)}")
    return check


def _must(accepts: Callable, message: str) -> Callable[[object], None]:
    """A check raising ``message`` (formatted with the value) when ``accepts`` refuses the value."""
    def check(value) -> None:
        try:
            ok = bool(accepts(value))
        except TypeError:  # a string where a number belongs
            ok = False
        if not ok:
            raise UsageError(message.format(value))
    return check


_iterations = _must(whole(1), "max_iter must be a positive number of iterations, got {}")


@dataclass(frozen=True)
class _TrainingOptions:
    """The options classify and compare share: how codes are normalized, weighted, split and cross-validated."""

    normalize: str = option(DEFAULT_NORMALIZE, check=_known("normalization", NORMALIZE))
    C: float | None = option(None, "C")
    class_weight: str | dict | None = option("balanced", optional=True)
    test: str | None = option(None)
    test_fraction: float | None = option(None, "test_fraction")
    seed: int = option(0)
    cv: int = option(5, "cv")
    progress: bool = option(True)
    n_jobs: int | None = option(None)
    max_iter: int | None = option(None, check=_iterations)
    overwrite: bool = option(False)
    max_memory: str | int | None = option(None)


@dataclass(frozen=True)
class ClassifyConfig(_TrainingOptions):
    """The options of `cnncodes classify` / ``classify_codes`` (``progress`` is the command line's --quiet,
    inverted)."""

    layers: str | Sequence[str] | None = option(None)
    classifier: str = option("svm", check=_known("classifier", CLASSIFIER_NAMES))
    sampling: str = option("none", check=_known("sampling", SAMPLING))
    calibrate: bool = option(False)
    positive: str | None = option(None)


@dataclass(frozen=True)
class CompareConfig(_TrainingOptions):
    """The options of `cnncodes compare` / ``compare``: classify's, with several classifiers, layer sets
    and sampling modes (each mode checked by ``check_options`` on its own)."""

    classifiers: Sequence[str] = option(DEFAULT_CLASSIFIERS)
    layers: str | Sequence | None = option(None)
    sampling: str | Sequence[str] = option("none")


def check_options(options: dict) -> None:
    """Raise UsageError naming the first option of ``options`` outside its allowed values."""
    check_config(ClassifyConfig, options)
