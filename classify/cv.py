"""The rows and folds of every cross-validation, in memory and streamed: check_training_set (the folds the
training labels allow), cv_sample (which rows) and cv_splitter (which folds).

Apart from classify.data so that both trainers (classify.train, classify.stream) share one CV rule.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from .data import require_two_classes


def check_training_set(y_train: np.ndarray, class_names: list[str], cv: int) -> tuple[int, list[str]]:
    """Raise on unusable training labels; return the CV folds to use (``cv`` checked at the boundary: classify.options),
    and notes."""
    require_two_classes(y_train, class_names, "the training split")
    counts = np.bincount(y_train, minlength=len(class_names))
    present = np.flatnonzero(counts)
    if cv == 0:
        return 0, ["no cross-validation (cv=0): the hyper-parameter is the one given (C), else the "
                   "classifier's default, and no CV score is computed"]
    single = [class_names[c] for c in present if counts[c] == 1]
    if single:
        raise ValueError(f"class {', '.join(map(repr, single))} has a single training example; "
                         f"cross-validation needs at least 2 per class (add images, or pass cv=0 with a fixed C)")
    smallest = int(counts[present].min())
    if smallest < cv:
        who = class_names[present[np.argmin(counts[present])]]
        note = (f"cross-validation reduced from {cv} to {smallest} folds: class {who!r} has only "
                f"{smallest} training examples")
        warnings.warn(note, stacklevel=3)
        return smallest, [note]
    return cv, []


def cv_sample(y: np.ndarray, max_rows: int, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """The training positions cross-validation uses (all, or a stratified, seeded sample of ``max_rows``, in
    order, topped up so that every class keeps ``folds`` rows where it has them) and the folds they allow.

    In memory and streamed alike, so candidates given the same ``max_rows`` are scored on the same folds of
    the same rows (``cv_splitter``)."""
    index = np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    if len(y) > max(max_rows, len(classes)):
        index, rest = train_test_split(index, train_size=max(max_rows, len(classes)), stratify=y, random_state=seed)
        short = [rest[y[rest] == c][:max(0, min(n, folds) - int((y[index] == c).sum()))]
                 for c, n in zip(classes, counts)]
        index = np.sort(np.concatenate([index, *short]))
    in_sample = np.bincount(y[index])
    return index, int(min(folds, in_sample[in_sample > 0].min()))


def cv_splitter(folds: int, seed: int) -> StratifiedKFold:
    """The folds of every cross-validation: stratified, shuffled with ``seed``."""
    return StratifiedKFold(folds, shuffle=True, random_state=seed)
