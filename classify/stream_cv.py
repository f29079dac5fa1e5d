"""The streamed fit's SGD model and its cross-validation: alpha chosen on a stratified in-memory sample of the
training rows (``choose_alpha``) over a grid that widens where CV prefers its edge (``search_alpha``), the
sample's size from the memory budget (``cv_row_limit``).

Apart from classify.stream (the out-of-core fit, evaluation and predict) so that each reads on its own.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
from imblearn.pipeline import Pipeline
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from .cv import CV_MAX_ROWS, CV_SCORING, cv_sample, cv_splitter
from .data import check_finite

# The CV sample, its copy while normalized, the fold being fitted and its scaled copy, the row columns: at 5 the
# sample overran a 256 MiB budget by 9%, at 6 it stayed inside (bench/RESULTS.md), so 6.
SAMPLE_MEMORY_FACTOR = 6
ALPHA_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # every alpha search starts here (powers of ten, ascending)
ALPHA_BOUNDS = (1e-8, 1.0)  # how far search_alpha may widen it, a decade at a time
DEFAULT_ALPHA = 1e-4  # scikit-learn's default, used when cross-validation is off
LOSSES = {"svm": "hinge", "softmax": "log_loss"}
MIN_CV_CLASS_ROWS = 5  # fewer rows of a class per validation fold: alpha's CV score is noise (a warning)
CV_MAX_EPOCHS = 50  # the CV fits' cap: the same alpha ranking in a third of the time (bench/RESULTS.md)


class SmallCVSampleWarning(UserWarning):
    """alpha was chosen by CV on a sample too small for its score to mean much."""


def make_sgd(classifier: str, weights, seed: int) -> SGDClassifier:
    """Hinge (svm) or log loss (softmax), averaged SGD: averaging makes the last epochs' noise cancel out."""
    return SGDClassifier(loss=LOSSES[classifier], class_weight=weights, average=True, random_state=seed)


def cv_row_limit(budget: int, dim: int, folds: int) -> int:
    """The most training rows the streamed cross-validation holds in memory: CV_MAX_ROWS, fewer when the
    budget is small (``compare`` gives every candidate the smallest limit among them)."""
    return max(folds * 2, min(CV_MAX_ROWS, budget // (SAMPLE_MEMORY_FACTOR * 4 * dim)))


def search_alpha(score: Callable[[list[float]], Sequence[float]], log, grid: Sequence[float],
                 bounds: tuple[float, float]) -> tuple[float, float, list[float], list[str]]:
    """(best alpha, its CV score, every alpha tried in ascending order, notes). ``score`` maps alphas to their
    mean CV scores on the training folds; it runs on ``grid``, then, while the best alpha is the lowest or highest
    tried, on one decade beyond it, within ``bounds``: the grid follows the training data, never the held-out
    split. Ties go to the alpha tried first (GridSearchCV's rule), so an extension must score higher to be
    chosen and a plateau does not drift to the bound."""
    scores = dict(zip(map(float, grid), map(float, score(list(grid)))))
    low, high = (round(math.log10(b)) for b in bounds)
    notes = []
    while True:
        best, tried = max(scores, key=scores.get), sorted(scores)
        step = -1 if best == tried[0] else 1 if best == tried[-1] else 0
        exponent = round(math.log10(best)) + step
        if not step or not low <= exponent <= high:
            break
        new = 10.0 ** exponent
        notes.append(f"alpha grid widened to {new:g}: CV chose {best:g}, the edge of the alphas tried")
        log(notes[-1])
        scores[new] = float(score([new])[0])
    if step:
        notes.append(f"alpha={best:g} is a bound of the search ({bounds[0]:g} ... {bounds[1]:g}), and CV preferred "
                     f"it to its neighbour: the best alpha may lie beyond")
    return best, scores[best], sorted(scores), notes


def choose_alpha(blocks, plan, classifier, normalizer, weights, C, folds, max_rows, seed, log):
    """(alpha, CV score, grid, folds used, notes): CV on a stratified in-memory sample of at most ``max_rows``
    training rows (``cv_sample``, as in memory), or a fixed value. Each CV fit fits its own feature scaler on
    its training folds (the final model's scaler, fitted on every training row, would leak the validation
    folds into them)."""
    n = len(plan.y_train)
    if C is not None:
        alpha = 1.0 / (C * n)
        return alpha, None, {}, 0, [f"C={C:g} fixed: alpha = 1 / (C x {n:,} training rows) = {alpha:.3g}"]
    if not folds:
        return DEFAULT_ALPHA, None, {}, 0, []
    sample, folds = cv_sample(plan.y_train, max_rows, folds, seed)
    X, y = blocks.gather(plan.train[sample]), plan.y_train[sample]
    check_finite(X, plan.train[sample], plan.paths, plan.codes_path)
    X = normalizer[:-1].transform(X) if len(normalizer.steps) > 1 else X  # the stateless normalization
    rows = (f"all {n:,} training rows" if len(y) == n else
            f"a stratified in-memory sample of {len(y):,} of {n:,} training rows")
    log(f"{classifier}: {folds}-fold CV over alpha in {list(ALPHA_GRID)} on {rows}")
    cv_model = Pipeline([("scale", StandardScaler()),
                         ("clf", make_sgd(classifier, weights, seed).set_params(max_iter=CV_MAX_EPOCHS))])

    def score(alphas: list[float]) -> Sequence[float]:
        search = GridSearchCV(cv_model, {"clf__alpha": alphas}, scoring=CV_SCORING, cv=cv_splitter(folds, seed),
                              error_score="raise", refit=False)
        return search.fit(X, y).cv_results_["mean_test_score"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the cap is deliberate
        alpha, cv_score, tried, widened = search_alpha(score, log, ALPHA_GRID, ALPHA_BOUNDS)
    notes = [f"alpha chosen by {folds}-fold CV on {rows} (feature scaling fitted on each fit's training folds, "
             f"at most {CV_MAX_EPOCHS} epochs per fit); the final model is trained on all of them", *widened]
    counts = np.bincount(y)
    per_fold = int(counts[counts > 0].min()) // folds
    if len(y) < n and per_fold < MIN_CV_CLASS_ROWS:
        notes.append(f"alpha was chosen on too few rows to mean much: {len(y):,} rows, {per_fold} of the smallest "
                     f"class per validation fold; raise --max-memory (a larger sample) or fix --C")
        warnings.warn(notes[-1], SmallCVSampleWarning, stacklevel=3)
    return alpha, cv_score, {"alpha": tried}, folds, notes
