"""Out-of-core classify: codes over the memory budget are read from HDF5 in row blocks, never all at once.

A linear SVM (hinge loss) or softmax (log loss, one-vs-rest) is trained by ``SGDClassifier.partial_fit``,
several epochs over the training rows with the blocks in a seeded random order; class weights come from
the label counts; the normalization (power and l2 are stateless) and a StandardScaler after it are
fitted in one streaming pass (``StandardScaler.partial_fit``); alpha is chosen by stratified cross-validation on an
in-memory sample of the training rows. Evaluation and predict read block by block too. The reports
and model files are those of ``classify_codes`` (same report.json keys, same model bundle).
"""
from __future__ import annotations

import os
import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import h5py
import imblearn
import numpy as np
import sklearn
from imblearn.pipeline import Pipeline
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from cnncodes.extract.codesfile import check_recipe
from cnncodes.extract.errors import UsageError

from .blocks import BLOCK_SHARE, Blocks
from .cv import check_training_set
from .data import check_finite, codes_shape, file_meta, layer_recipe, meta_rows, resolve_layers
from .fileio import write_files
from .model_io import load_model, model_files
from .models import class_weight_values, make_normalizer, parse_class_weight
from .predictions import csv_text, evaluate_known, predict_rows, true_labels
from .render import report_files, summarize
from .report import build_report
from .split import Plan, plan_split
from .stream_cv import CV_SCORING, LOSSES, SmallCVSampleWarning, choose_alpha, cv_row_limit, make_sgd

# In-memory classify peaks at about this many times the float32 codes it loads (bench/RESULTS.md):
# the loaded file, the selected rows, the normalized copy and the solver's own copy.
TRAIN_MEMORY_FACTOR = 4
PREDICT_MEMORY_FACTOR = 2
MIN_EPOCHS, MAX_EPOCHS = 5, 100
MIN_ROW_UPDATES = 100_000  # small training sets get more epochs: SGD needs about this many steps to settle
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


# ------------------------------------------------------------------------------------------- budget
def parse_size(text: str | int) -> int:
    """``2G``, ``512M``, ``1.5GiB``, ``300k`` or plain bytes -> bytes (binary units); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match or not float(match[1]) > 0:
        raise UsageError(f"memory size must look like 2G, 512M or 1000000 (bytes), got {text!r}")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def default_budget() -> int:
    """A quarter of the machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def budget_bytes(max_memory: str | int | None) -> int:
    return default_budget() if max_memory is None else parse_size(max_memory)


def in_memory_bytes(path: str | os.PathLike, layers: Sequence[str], factor: int = TRAIN_MEMORY_FACTOR) -> int:
    """About what the in-memory path needs for ``layers`` of ``path`` (float32 codes times ``factor``)."""
    rows, dim = codes_shape(path, layers)
    return factor * rows * dim * 4


def should_stream(path: str | os.PathLike, layers: str | Sequence[str] | None, max_memory: str | int | None,
                  factor: int = TRAIN_MEMORY_FACTOR) -> bool:
    """True when the in-memory path would exceed the budget (``max_memory``, default a quarter of RAM)."""
    budget = budget_bytes(max_memory)  # a bad size fails before anything is read
    return in_memory_bytes(path, resolve_layers(path, layers), factor) > budget


def human(n: int) -> str:
    """A size in GiB, MiB, KiB or bytes (a small budget is not "0 MiB")."""
    if n >= 2 ** 30:
        return f"{n / 2 ** 30:.2f} GiB"
    if n >= 2 ** 20:
        return f"{n / 2 ** 20:.0f} MiB"
    return f"{n / 2 ** 10:.0f} KiB" if n >= 2 ** 10 else f"{n} bytes"


# ------------------------------------------------------------------------------------------- training
def classify_streamed(codes, out_dir: Path, *, layers: str | Sequence[str] | None, classifier: str, normalize: str,
                      C: float | None, class_weight, sampling: str, test, test_fraction: float | None, seed: int,
                      cv: int, max_memory: str | int | None, log, cv_max_rows: int | None = None) -> dict:
    """classify_codes for codes over the memory budget: SGD over row blocks (see the module docstring).
    ``cv_max_rows`` overrides ``cv_row_limit`` (compare's common CV rows)."""
    check_streamable(classifier, sampling)
    layers = resolve_layers(codes, layers)
    budget = budget_bytes(max_memory)
    plan = plan_split(codes, layers, test, test_fraction, seed, block_bytes=budget // BLOCK_SHARE)
    names = plan.class_names
    folds, fold_notes = check_training_set(plan.y_train, names, cv)
    weights = class_weight_values(parse_class_weight(class_weight, names), plan.y_train)  # partial_fit needs them
    rows, dim = codes_shape(codes, layers)
    start = time.perf_counter()
    with h5py.File(codes, "r") as h5, threadpool_limits(limits=1), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        blocks = Blocks(h5, layers, budget)
        epochs = epochs_for(len(plan.train))
        notes = [f"streamed solver: the in-memory path would need about "
                 f"{human(in_memory_bytes(codes, layers))} ({TRAIN_MEMORY_FACTOR} x the {rows:,} x {dim:,} float32 "
                 f"codes), over the memory budget of {human(budget)} (--max-memory); SGDClassifier(loss="
                 f"{LOSSES[classifier]!r}).partial_fit over {len(blocks.bounds)} block(s) of up to {blocks.rows:,} "
                 f"rows, {epochs} epochs over shuffled batches (seeded), averaged weights, class weights from "
                 "the label counts",
                 *plan.notes, *fold_notes]
        if classifier == "softmax":
            notes.append("streamed softmax is one-vs-rest logistic regression (SGD, log loss), not the "
                         "in-memory multinomial model")
        normalizer = _fit_normalizer(normalize, blocks, plan, codes, log)
        alpha, cv_score, grid, folds, cv_notes = choose_alpha(
            blocks, plan, classifier, normalizer, weights, C, folds, cv_max_rows or cv_row_limit(budget, dim, folds),
            seed, log)
        notes += cv_notes
        clf = make_sgd(classifier, weights, seed).set_params(alpha=alpha)
        classes = np.unique(plan.y_train)
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            log(f"{classifier}: epoch {epoch + 1}/{epochs} over {len(plan.train):,} training rows")
            for pos, X in blocks.shuffled_batches(plan.train, rng):
                check_finite(X, plan.train[pos], plan.paths, codes)
                clf.partial_fit(normalizer.transform(X), plan.y_train[pos], classes=classes)
        model = Pipeline([*normalizer.steps, ("clf", clf)])
    fit_time = time.perf_counter() - start
    notes += sorted({f"{w.category.__name__}: {w.message}" for w in caught if str(w.message) not in notes})
    for w in caught:  # a CV sample too small still warns the caller
        if issubclass(w.category, SmallCVSampleWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    log(f"evaluating on {len(plan.test):,} test rows (streamed)")
    y_pred = _predict_rows(model, plan.test_path, plan.test_layers, plan.test, budget, plan.test_paths)
    report = _report(plan, layers, classifier, normalize, class_weight, weights, sampling, seed, alpha, cv_score,
                     folds, grid, fit_time, y_pred, notes)
    bundle = {"pipeline": model, "class_names": names, "layers": layers, "recipe": plan.recipe,
              "layer_recipe": layer_recipe(plan.recipe, layers),
              "settings": {k: report[k] for k in ("classifier", "normalize", "class_weight", "sampling", "seed",
                                                   "C", "best_params", "cv_score", "cv_folds", "codes")},
              "versions": report["versions"]}
    log(f"writing {out_dir}")
    write_files(out_dir, {**report_files(report), **model_files(bundle)})
    log(summarize(report))
    return report


def check_streamable(classifier: str, sampling: str) -> None:
    """ValueError unless ``classifier`` with ``sampling`` can be trained on streamed codes."""
    if classifier not in LOSSES:
        raise UsageError(f"classifier {classifier} needs every code in memory; when codes are streamed "
                         f"(over --max-memory) choose {' or '.join(LOSSES)}, or raise --max-memory")
    if sampling != "none":
        raise UsageError(f"sampling {sampling!r} needs every code in memory; streamed training balances classes by "
                         "class weights (--class-weight balanced, the default), or raise --max-memory")


def epochs_for(n_train: int) -> int:
    return int(np.clip(np.ceil(MIN_ROW_UPDATES / max(n_train, 1)), MIN_EPOCHS, MAX_EPOCHS))


def _fit_normalizer(normalize: str, blocks: Blocks, plan: Plan, codes, log) -> Pipeline:
    """The normalization, then a StandardScaler for SGD (which needs features of comparable scale: on
    power-normalized codes its accuracy fell far behind liblinear's without it), both fitted in one
    streaming pass; ``standard`` is that scaler alone."""
    step = make_normalizer(normalize)
    steps = [] if isinstance(step, StandardScaler) else [("normalize", step)]
    steps.append(("normalize" if not steps else "scale", StandardScaler()))
    prep = Pipeline(steps)
    log(f"{normalize} normalization and feature scaling: one pass over {len(plan.train):,} training rows")
    first = True
    for pos, X in blocks.select(plan.train):
        check_finite(X, plan.train[pos], plan.paths, codes)
        if first and len(steps) == 2:
            steps[0] = ("normalize", FunctionTransformer() if step == "passthrough" else step.fit(X[:1]))
            prep = Pipeline(steps)
        first = False
        prep.steps[-1][1].partial_fit(prep[:-1].transform(X) if len(steps) == 2 else X)
    return prep


def _predict_rows(model, path, layers, index: np.ndarray, budget: int, paths) -> np.ndarray:
    out = np.empty(len(index), dtype=np.int64)
    with h5py.File(path, "r") as h5:
        for pos, X in Blocks(h5, layers, budget).select(index):
            check_finite(X, index[pos], paths, path)
            out[pos] = model.predict(X)
    return out


def _report(plan: Plan, layers, classifier, normalize, class_weight, weights, sampling, seed, alpha, cv_score,
            folds, grid, fit_time, y_pred, notes) -> dict:
    """The report of classify_codes (report.build_report), alpha being the hyper-parameter."""
    settings = {
        "codes": plan.codes_path, "test_codes": plan.test_codes, "split_source": plan.split_source,
        "layers": layers, "classifier": classifier, "normalize": normalize, "sampling": sampling, "seed": seed,
        "C": None, "best_params": {"alpha": alpha}, "hyperparameter": f"alpha={alpha:g}, streamed SGD",
        "cv_score": cv_score, "cv_folds": folds, "cv_scoring": CV_SCORING, "cv_grid": grid,
        "n_failed_excluded": plan.n_failed_excluded, "n_unlabeled_excluded": plan.n_unlabeled_excluded,
        "max_iter": None, "calibrated": False, "recipe": plan.recipe,
        "versions": {"scikit-learn": sklearn.__version__, "imbalanced-learn": imblearn.__version__},
    }
    return build_report(settings, plan.class_names, plan.y_train, plan.y_test, y_pred, class_weight=class_weight,
                        weights=weights, fit_time=fit_time, binary=None, notes=notes)


# ------------------------------------------------------------------------------------------- predict
def predict_streamed(run_dir, codes_path, out_csv, max_memory: str | int | None = None) -> dict:
    """predict_codes, reading the codes block by block and writing the CSV as it goes (the same rows,
    columns and result keys: predict's own per-block prediction and CSV writer)."""
    from types import SimpleNamespace

    bundle = load_model(run_dir)
    layers = bundle["layers"]
    meta, _ = file_meta(codes_path)
    check_recipe(layer_recipe(bundle["recipe"], layers), layer_recipe(meta.get("recipe", {}), layers),
                 f"codes file {codes_path}")
    resolve_layers(codes_path, layers)
    pipe, names = bundle["pipeline"], bundle["class_names"]
    classes = [names[int(c)] for c in pipe.classes_]
    budget = budget_bytes(max_memory)
    meta, rows = meta_rows(codes_path)
    true = true_labels(SimpleNamespace(rows=rows, class_names=list(meta.get("class_names", []))))
    known = np.isin(true, classes)
    predicted, good = np.full(len(rows), "", dtype=object), np.zeros(len(rows), dtype=bool)

    def write(path: Path) -> None:
        with h5py.File(codes_path, "r") as h5, open(path, "w", newline="", encoding="utf-8") as f:
            blocks = Blocks(h5, layers, budget)
            for start, stop in blocks.bounds:
                block = slice(start, stop)
                pred = predict_rows(bundle, SimpleNamespace(rows=rows.take(block)), blocks.read(start, stop), None, None)
                predicted[block], good[block] = pred.predicted, pred.good
                f.write(csv_text(rows.paths[block], pred, true[block] if known.any() else None, header=start == 0))

    out_csv = Path(out_csv)
    write_files(out_csv.parent if str(out_csv.parent) else ".", {out_csv.name: write})
    return {"out_csv": str(out_csv), "n_rows": int(len(rows)), "n_predicted": int(good.sum()),
            "n_failed": int((~good).sum()), "predicted_counts": dict(Counter(predicted[good].tolist())),
            "score": "decision_function" if hasattr(pipe, "decision_function") else "predict_proba",
            "probabilities": hasattr(pipe, "predict_proba"), "threshold": None,
            "evaluation": evaluate_known(true, predicted, good, known)}
