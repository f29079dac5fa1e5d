"""classify_codes: fit one classifier on cached codes, evaluate it, write the model and reports."""
from __future__ import annotations

import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import imblearn
import numpy as np
import sklearn
from imblearn.pipeline import Pipeline
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_limits

from cnncodes.extract.errors import UsageError
from cnncodes.extract.outputs import guards_output

from . import options
from .cv import CV_MAX_ROWS, CV_SCORING, check_training_set, cv_sample, cv_splitter, warm_path_cv
from .data import layer_recipe
from .fileio import ensure_writable, write_files
from .model_io import model_files
from .models import build_pipeline, classifier_spec, param_grid, parse_class_weight
from .options import DEFAULT_NORMALIZE
from .render import report_files, summarize
from .report import binary_metrics, build_report, class_counts, missing_test_classes, positive_scores
from .split import Dataset, load_dataset
from .stream import classify_streamed, should_stream

CALIBRATION_FOLDS = 3  # sigmoid calibration folds inside the training split (fewer when a class is smaller)


@guards_output("out_dir")
def classify_codes(codes: str | os.PathLike, out_dir: str | os.PathLike, layers: str | Sequence[str] | None = None,
                   classifier: str = "svm", normalize: str = DEFAULT_NORMALIZE, C: float | None = None,
                   class_weight: str | dict | None = "balanced", sampling: str = "none",
                   test: str | os.PathLike | None = None, test_fraction: float | None = None, seed: int = 0,
                   cv: int = 5, progress: bool = True, n_jobs: int | None = None, calibrate: bool = False,
                   max_iter: int | None = None, positive: str | None = None, overwrite: bool = False,
                   max_memory: str | int | None = None) -> dict:
    """Train ``classifier`` on the codes of ``layers`` and evaluate it on held-out codes.

    Splits: ``test`` (another codes file of the same recipe, classes matched by name; every labeled
    row of ``codes`` then trains) or ``test_fraction`` (stratified, ``seed``),
    else the file's split column (train fits; test evaluates, else val), else a stratified 0.25 test
    fraction. ``C`` is chosen by stratified ``cv``-fold cross-validation (balanced accuracy) on the
    training split unless fixed; ``cv=0`` skips cross-validation. ``calibrate`` wraps the chosen
    classifier in sigmoid calibration (CalibratedClassifierCV, folds of the training split) so that
    it gives probabilities; ``max_iter`` raises the solver's iteration limit; ``positive`` names the
    positive class of a two-class task (default: the second class name). Writes report.json,
    report.txt, confusion.csv, confusion.png (two classes: also pr_curve.png, roc.png) and
    model.joblib (+ .sha256) into ``out_dir``, which must not hold a model yet unless ``overwrite``;
    returns the report. Raises ValueError with a readable message for unusable input. Codes over
    ``max_memory`` (``"2G"``, default a quarter of RAM) are streamed from the file by SGD instead:
    see classify/stream.py.
    """
    options.check_options(dict(classifier=classifier, normalize=normalize, sampling=sampling, C=C, cv=cv,
                               test_fraction=test_fraction, max_iter=max_iter))
    out_dir = ensure_writable(out_dir)
    log = make_logger(progress)
    if should_stream(codes, layers, max_memory):
        if calibrate:
            raise UsageError("--calibrate needs every code in memory; these codes are streamed (over --max-memory): "
                             "use softmax for probabilities, or raise --max-memory")
        return classify_streamed(codes, out_dir, layers=layers, classifier=classifier, normalize=normalize, C=C,
                                 class_weight=class_weight, sampling=sampling, test=test, test_fraction=test_fraction,
                                 seed=seed, cv=cv, max_memory=max_memory, log=log)
    log(f"loading {codes}")
    data = load_dataset(codes, layers, test=test, test_fraction=test_fraction, seed=seed)
    return fit_and_report(data, out_dir, classifier=classifier, normalize=normalize, C=C, class_weight=class_weight,
                          sampling=sampling, seed=seed, cv=cv, log=log, n_jobs=n_jobs, calibrate=calibrate,
                          max_iter=max_iter, positive=positive)


def check_options(classifier: str, normalize: str, sampling: str) -> None:
    """Fail fast on unknown option values, before any data is read (the rules: classify/options.py)."""
    options.check_options(dict(classifier=classifier, normalize=normalize, sampling=sampling))


def fit_and_report(data: Dataset, out_dir: Path, *, classifier: str, normalize: str, C: float | None,
                   class_weight, sampling: str, seed: int, cv: int, log=None, n_jobs: int | None = None,
                   calibrate: bool = False, max_iter: int | None = None, positive: str | None = None,
                   cv_max_rows: int | None = None) -> dict:
    """Fit (with CV for the hyper-parameter), evaluate on the test split, write every output file.
    ``cv_max_rows`` overrides ``cv_row_limit`` (compare's common CV rows)."""
    log = log or make_logger(False)
    options.check_options({"max_iter": max_iter})
    names = data.class_names
    positive_index = _positive_index(data.y_train, names, positive)
    weights = parse_class_weight(class_weight, names)
    folds, notes = check_training_set(data.y_train, names, cv)
    notes = list(data.notes) + notes
    spec = classifier_spec(classifier)
    if C is not None and spec.param != "C":
        notes.append(f"C={C} ignored: {classifier} has no C (it cross-validates {spec.param})")
        C = None
    if weights is not None and not spec.takes_class_weight:
        notes.append(f"class weight ignored: {classifier} does not support it (use sampling instead)")
    pipe = build_pipeline(classifier, normalize, sampling, weights, seed)
    notes += _set_max_iter(pipe, classifier, max_iter)

    start = time.perf_counter()
    # One BLAS/OpenMP thread per fit: these are small, many matrices, and oversubscribed threads made the
    # softmax cross-validation 20x slower on a busy 2-core machine. Parallelism comes from n_jobs instead.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        if folds:
            index, folds = cv_sample(data.y_train, cv_max_rows or cv_row_limit(classifier), folds, seed)
            X_cv, y_cv = data.X_train[index], data.y_train[index]
            grid = param_grid(classifier, C, n_train_fold=len(y_cv) * (folds - 1) // folds)
            if len(y_cv) < len(data.y_train):
                notes.append(f"{spec.param} chosen by CV on a stratified sample of {len(y_cv)} of "
                             f"{len(data.y_train)} training rows; the final model is fitted on all of them")
            values = list(grid.values())[0]
            log(f"{classifier}: {folds}-fold CV over {spec.param} in {values} ({len(y_cv)} training rows, "
                f"{folds * len(values)} fits)")
            splitter = cv_splitter(folds, seed)
            if spec.warm_path and len(values) > 1:
                best, cv_score = warm_path_cv(pipe, spec.param, values, X_cv, y_cv, splitter, n_jobs,
                                              spec.cv_params)
            else:
                search = GridSearchCV(pipe, grid, scoring=CV_SCORING, cv=splitter, n_jobs=n_jobs,
                                      error_score="raise", refit=False).fit(X_cv, y_cv)
                best, cv_score = search.best_params_["clf__" + spec.param], search.best_score_
            log(f"{classifier}: CV chose {spec.param}={best} ({CV_SCORING} {cv_score:.4f}) in "
                f"{time.perf_counter() - start:.1f} s; fitting on all {len(data.y_train)} training rows")
            model = clone(pipe).set_params(**{"clf__" + spec.param: best})
        else:
            best = C if C is not None else spec.default
            log(f"{classifier}: fitting with {spec.param}={best} (no cross-validation)")
            model = pipe.set_params(**{"clf__" + spec.param: best})
            cv_score, grid = None, {}
        resampled = resampled_labels(model, data.X_train, data.y_train)
        if calibrate:
            notes += _calibrate(model, classifier, data.y_train, names, seed)
        model.fit(data.X_train, data.y_train)
    fit_time = time.perf_counter() - start
    notes += _warning_notes(caught, classifier)

    log(f"evaluating on {len(data.y_test)} test rows")
    y_pred = model.predict(data.X_test)
    notes += missing_test_classes(data.y_test, y_pred, names)
    best = best.item() if isinstance(best, np.generic) else best
    binary = None
    if positive_index is not None:
        scores, score_kind = positive_scores(model, data.X_test, positive_index)
        binary = binary_metrics(data.y_test, y_pred, scores, positive_index, names, score_kind)
        notes += binary.pop("notes")
    settings = {
        "codes": data.codes_path, "test_codes": data.test_path, "split_source": data.split_source,
        "layers": data.layers, "classifier": classifier, "normalize": normalize, "sampling": sampling, "seed": seed,
        "C": best if spec.param == "C" else None, "best_params": {spec.param: best},
        "hyperparameter": f"{spec.param}={best:g}" if isinstance(best, float) else f"{spec.param}={best}",
        "cv_score": None if cv_score is None else float(cv_score), "cv_folds": folds, "cv_scoring": CV_SCORING,
        "cv_grid": {k.removeprefix("clf__"): v for k, v in grid.items()},
        "n_failed_excluded": data.n_failed_excluded, "n_unlabeled_excluded": data.n_unlabeled_excluded,
        "max_iter": max_iter, "calibrated": isinstance(model.named_steps["clf"], CalibratedClassifierCV),
        "recipe": data.recipe,
        "versions": {"scikit-learn": sklearn.__version__, "imbalanced-learn": imblearn.__version__},
    }
    report = build_report(settings, names, data.y_train, data.y_test, y_pred, class_weight=class_weight,
                          weights=weights, fit_time=fit_time, binary=binary, notes=notes,
                          resampled_class_counts=class_counts(resampled, names))
    bundle = {"pipeline": model, "class_names": names, "layers": data.layers, "recipe": data.recipe,
              "layer_recipe": layer_recipe(data.recipe, data.layers),
              "settings": {k: report[k] for k in ("classifier", "normalize", "class_weight", "sampling", "seed",
                                                   "C", "best_params", "cv_score", "cv_folds", "codes",
                                                   "calibrated", "max_iter")},
                  "positive_class": binary["positive_class"] if binary else None,
              "versions": report["versions"]}
    log(f"writing {out_dir}")
    write_files(out_dir, {**report_files(report), **model_files(bundle)})
    log(summarize(report))
    return report


def _positive_index(y_train: np.ndarray, names: list[str], positive: str | None) -> int | None:
    """The positive class of a two-class training set (default: the second one); None otherwise."""
    present = [int(c) for c in np.unique(y_train)]
    if len(present) != 2:
        if positive is not None:
            raise UsageError(f"a positive class applies to two-class tasks; this training set has {len(present)} "
                             "classes")
        return None
    if positive is None:
        return present[1]
    if positive not in [names[c] for c in present]:
        raise UsageError(f"positive class {positive!r} is not a class here; classes: "
                         f"{', '.join(names[c] for c in present)}")
    return names.index(positive)


def _set_max_iter(pipe, classifier: str, max_iter: int | None) -> list[str]:
    """Raise the classifier's iteration limit (notes when it has none)."""
    if max_iter is None:
        return []
    if "max_iter" not in pipe.named_steps["clf"].get_params():
        return [f"max_iter ignored: {classifier} has no iteration limit"]
    pipe.set_params(clf__max_iter=max_iter)
    return []


def _calibrate(model, classifier: str, y: np.ndarray, names: list[str], seed: int) -> list[str]:
    """Replace the samplers and classifier by their sigmoid-calibrated version (probabilities from folds of
    the training split): the samplers go inside, so each calibration fold is resampled on its own and copies
    of one row never sit on both sides of a fold."""
    clf = model.named_steps["clf"]
    if hasattr(clf, "predict_proba"):
        return [f"calibration skipped: {classifier} gives probabilities itself"]
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        who = names[int(np.flatnonzero(counts == smallest)[0])]
        raise UsageError(f"calibration needs at least 2 training examples per class; {who!r} has {smallest}")
    folds = min(CALIBRATION_FOLDS, smallest)
    samplers = model.steps[1:-1]
    inner = Pipeline([*samplers, ("clf", clf)]) if samplers else clf
    model.steps[1:] = [("clf", CalibratedClassifierCV(
        inner, method="sigmoid", ensemble=False, cv=cv_splitter(folds, seed)))]
    return [f"probabilities by sigmoid calibration ({folds}-fold, on the training split); predictions are the most "
            "probable class"]


def _warning_notes(caught: list, classifier: str) -> list[str]:
    """Warnings raised while fitting, as report notes; one clean warning per kind instead of one per fit."""
    notes = []
    by_kind: dict[tuple[type, str], int] = Counter((w.category, " ".join(str(w.message).split())) for w in caught)
    for (category, message), n in sorted(by_kind.items(), key=lambda item: item[0][1]):
        times = f" ({n} fits)" if n > 1 else ""
        hint = " Raise max_iter (--max-iter)." if issubclass(category, ConvergenceWarning) else ""
        note = f"{category.__name__} in {classifier}{times}: {message}{hint}"
        notes.append(note)
        warnings.warn(note, category, stacklevel=3)
    return notes


def cv_row_limit(classifier: str) -> int:
    """The most training rows the in-memory cross-validation of ``classifier`` uses (its spec's, else
    CV_MAX_ROWS); ``compare`` gives every candidate the smallest limit among them."""
    spec = classifier_spec(classifier)
    return min(spec.cv_max_rows or CV_MAX_ROWS, CV_MAX_ROWS)


def resampled_labels(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The training labels as the classifier saw them after the pipeline's samplers (same seeds)."""
    for _, step in model.steps[:-1]:
        if hasattr(step, "fit_resample"):
            X, y = clone(step).fit_resample(X, y)
    return y


def make_logger(progress: bool):
    def log(message: str) -> None:
        if progress:
            print(f"[classify] {message}", file=sys.stderr, flush=True)
    return log
