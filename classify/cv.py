"""The rows and folds of every cross-validation, in memory and streamed: check_training_set (the folds the
training labels allow), cv_sample (which rows), cv_splitter (which folds), and warm_path_cv (the in-memory
search along C with warm starts).

Apart from classify.data so that both trainers (classify.train, classify.stream) share one CV rule.
"""
from __future__ import annotations

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits

from cnncodes.extract.errors import UsageError

from .data import require_two_classes

CV_SCORING = "balanced_accuracy"  # what cross-validation chooses by, in memory and streamed
# Above this many training rows, C (or alpha) is chosen on a stratified sample (the final fit still uses every
# row): 25 cross-validation fits on 100,000 codes would take most of an hour on two cores. A speed setting:
# samples of real training sets did not choose C as their full CV did (bench/RESULTS.md, issue 22 item 13).
CV_MAX_ROWS = 20_000


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
        raise UsageError(f"class {', '.join(map(repr, single))} has a single training example; "
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


def warm_path_cv(pipe, param: str, values, X: np.ndarray, y: np.ndarray, splitter, n_jobs: int | None = None,
                 cv_params=None):
    """(best value, its mean CV balanced accuracy), as GridSearchCV would choose them (ties: the first value
    in grid order), but each fold is prepared once and fits ``values`` in ascending order, every fit warm-started
    from the previous one (the solutions move little between neighbouring C values); ``cv_params`` are set on
    the classifier of these fits."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    per_fold = Parallel(n_jobs=n_jobs)(delayed(_fold_path)(pipe, param, [values[i] for i in order], X, y, train, test,
                                                           cv_params) for train, test in splitter.split(X, y))
    scores = np.empty(len(values))
    scores[order] = np.mean(per_fold, axis=0)
    best = int(np.argmax(scores))
    return values[best], float(scores[best])


def _fold_path(pipe, param: str, values, X, y, train, test, cv_params=None) -> list[float]:
    """Balanced accuracy on ``test`` of the pipeline fitted on ``train`` at each of ``values``, in order:
    the preprocessing and samplers are fitted once, the classifier is refitted with warm starts."""
    X_fit, y_fit, X_val = X[train], y[train], X[test]
    for _, step in pipe.steps[:-1]:
        if step is None or step == "passthrough":
            continue
        step = clone(step)
        if hasattr(step, "fit_resample"):
            X_fit, y_fit = step.fit_resample(X_fit, y_fit)
        else:
            X_fit = step.fit_transform(X_fit, y_fit)
            X_val = step.transform(X_val)
    clf = clone(pipe.steps[-1][1]).set_params(warm_start=True, **(cv_params or {}))
    with threadpool_limits(limits=1):
        return [balanced_accuracy_score(y[test], clf.set_params(**{param: v}).fit(X_fit, y_fit).predict(X_val))
                for v in values]


def cv_subsample(X: np.ndarray, y: np.ndarray, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_rows`` rows, stratified by class and seeded (``cv_sample``'s rows)."""
    keep, _ = cv_sample(y, max_rows, 2, seed)
    return X[keep], y[keep]
