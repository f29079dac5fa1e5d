"""predict_codes: apply a trained model to a codes file of new images, one CSV row per image."""
from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from extract.codesfile import check_recipe
from extract.errors import UsageError
from extract.outputs import guards_output

from .data import class_names_of, file_meta, file_taps, layer_recipe, load
from .fileio import write_files
from .model_io import load_model
from .runs import is_codes_file
from .stream import PREDICT_MEMORY_FACTOR, predict_streamed, should_stream


@guards_output("out_csv", folder=False, run="run_dir")
def predict_codes(run_dir: str | os.PathLike, codes_path: str | os.PathLike, out_csv: str | os.PathLike, *,
                  threshold: float | None = None, positive: str | None = None, overwrite: bool = False) -> dict:
    """Write ``path, predicted, [true,] score_<class>..., [prob_<class>...,] error`` for every row.

    The codes file must have been extracted with the model's recipe for the taps the model uses
    (RecipeMismatch names the difference otherwise). Scores are ``decision_function`` values where
    the classifier has one (for two classes: minus / plus the decision value), else probabilities;
    ``prob_`` columns come where the model gives probabilities (softmax, knn, forest, calibrated
    svm). For two classes, ``threshold`` predicts ``positive`` (default: the second class) when its
    probability (else its score) is at least the threshold. Rows labelled with classes the model
    knows get a ``true`` column and are scored (accuracy, balanced accuracy). Rows whose image
    failed (or whose codes are not finite) get an empty prediction and their error. An existing
    ``out_csv`` is replaced only with ``overwrite``, and never a file of ``run_dir``.
    """
    bundle = load_model(run_dir)
    rule = threshold_rule(bundle, threshold, positive)
    layers = bundle["layers"]
    _check_layers(codes_path, layers)
    meta, _ = file_meta(codes_path)
    check_recipe(layer_recipe(bundle["recipe"], layers), layer_recipe(meta.get("recipe", {}), layers),
                 f"codes file {codes_path}")
    if should_stream(codes_path, layers, None, factor=PREDICT_MEMORY_FACTOR):  # over a quarter of RAM
        if threshold is not None:
            raise UsageError(f"{codes_path} is streamed (its codes are over a quarter of RAM); --threshold needs "
                             "them in memory: predict on a smaller file")
        return predict_streamed(run_dir, codes_path, out_csv)
    cf, X = load(codes_path, layers)
    pred = _predict(bundle, cf, X, rule, threshold)
    true = true_labels(cf)
    known = np.isin(true, pred.classes)
    out_csv = Path(out_csv)
    write_files(out_csv.parent if str(out_csv.parent) else ".",
                {out_csv.name: _csv_text(cf.rows.paths, pred, true if known.any() else None)})
    good = pred.good
    return {"out_csv": str(out_csv), "n_rows": int(len(X)), "n_predicted": int(good.sum()),
            "n_failed": int((~good).sum()), "predicted_counts": dict(Counter(pred.predicted[good].tolist())),
            "score": "decision_function" if hasattr(bundle["pipeline"], "decision_function") else "predict_proba",
            "probabilities": pred.probs is not None,
            "threshold": threshold_entry(rule, threshold),
            "evaluation": evaluate_known(true, pred.predicted, good, known)}


_predict_codes = predict_codes.__wrapped__  # unguarded, for predict_images, which holds the guard already


@dataclass
class Predictions:
    """Per-row outputs; rows that are not ``good`` (failed image, non-finite codes) hold blanks/NaN."""

    classes: list[str]
    good: np.ndarray
    errors: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray
    probs: np.ndarray | None  # None when the model gives no probabilities


def _predict(bundle: dict, cf, X: np.ndarray, rule, threshold: float | None) -> Predictions:
    pipe, names = bundle["pipeline"], bundle["class_names"]
    classes = [names[int(c)] for c in pipe.classes_]
    errors = np.array(cf.rows.errors, dtype=object)
    ok = cf.rows.ok.astype(bool)
    finite = np.isfinite(X).all(axis=1)
    errors[ok & ~finite] = "codes contain NaN or infinite values"
    good = ok & finite
    errors[~good & (errors == "")] = "image failed"
    predicted = np.full(len(X), "", dtype=object)
    scores = np.full((len(X), len(classes)), np.nan)
    probs = np.full((len(X), len(classes)), np.nan) if hasattr(pipe, "predict_proba") else None
    if good.any():
        predicted[good] = [names[int(c)] for c in pipe.predict(X[good])]
        scores[good] = _scores(pipe, X[good])
        if probs is not None:
            probs[good] = pipe.predict_proba(X[good])
    if rule is not None:
        value = (probs if probs is not None else scores)[:, classes.index(rule[0])]
        apply_threshold(predicted, value, good, rule, threshold)
    return Predictions(classes, good, errors, predicted, scores, probs)


def _csv_text(paths, pred: Predictions, true: np.ndarray | None, header: bool = True) -> str:
    """``path, predicted, [true,] score_..., [prob_...,] error``: numbers blank where the row failed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(["path", "predicted", *(["true"] if true is not None else []),
                         *(f"score_{c}" for c in pred.classes),
                         *((f"prob_{c}" for c in pred.classes) if pred.probs is not None else ()), "error"])
    blank = [""] * len(pred.classes)
    for i, good in enumerate(pred.good):
        numbers = [pred.scores[i]] + ([pred.probs[i]] if pred.probs is not None else [])
        cells = [c for row in numbers for c in ([f"{v:.6g}" for v in row] if good else blank)]
        writer.writerow([paths[i], pred.predicted[i], *([true[i]] if true is not None else []), *cells,
                         "" if good else pred.errors[i]])
    return buf.getvalue()


def threshold_rule(bundle: dict, threshold: float | None, positive: str | None) -> tuple[str, str, str] | None:
    """(positive class, negative class, "prob" or "score") for a codes model's threshold (see binary_rule)."""
    pipe, names = bundle["pipeline"], bundle["class_names"]
    return binary_rule([names[int(c)] for c in pipe.classes_], hasattr(pipe, "predict_proba"), threshold, positive)


def binary_rule(classes: list[str], probabilities: bool, threshold: float | None,
                positive: str | None) -> tuple[str, str, str] | None:
    """(positive class, negative class, "prob" or "score") for a two-class threshold; None without one.

    The one check of --threshold / --positive for either kind of model (codes model, fine-tuned
    network), made before any extraction, so a bad option fails at once.
    """
    if threshold is None:
        if positive is not None:
            raise UsageError("--positive names the class a --threshold applies to; give a threshold too")
        return None
    if len(classes) != 2:
        raise UsageError(f"a decision threshold needs a two-class model; this one has {len(classes)} classes "
                         f"({', '.join(classes)})")
    pos = positive if positive is not None else classes[1]
    if pos not in classes:
        raise UsageError(f"positive class {pos!r} is not a class of the model; classes: {', '.join(classes)}")
    on = "prob" if probabilities else "score"
    if on == "prob" and not 0 <= threshold <= 1:
        raise UsageError(f"the threshold applies to the probability prob_{pos}, so it must lie in [0, 1], "
                         f"not {threshold}")
    return pos, next(c for c in classes if c != pos), on


def apply_threshold(predicted: np.ndarray, value: np.ndarray, good: np.ndarray, rule: tuple[str, str, str],
                    threshold: float) -> None:
    """Set ``predicted`` on good rows to the positive class where ``value`` >= ``threshold``, else the other."""
    pos, neg, _ = rule
    predicted[good] = np.where(value[good] >= threshold, pos, neg)


def threshold_entry(rule: tuple[str, str, str] | None, threshold: float | None) -> dict | None:
    """The result's ``threshold`` entry: the positive class, the threshold and the column it applies to."""
    return None if rule is None else {"positive_class": rule[0], "threshold": threshold, "on": f"{rule[2]}_{rule[0]}"}


def true_labels(cf) -> np.ndarray:
    """Each row's label name from the codes file ("" when unlabeled)."""
    file_names = class_names_of(cf)
    return np.array([file_names[int(v)] if v >= 0 else "" for v in cf.rows.labels], dtype=object)


def evaluate_known(true: np.ndarray, predicted: np.ndarray, good: np.ndarray, known: np.ndarray) -> dict | None:
    """Accuracy and balanced accuracy over predicted rows whose label the model knows; None if none."""
    unknown = Counter(true[(true != "") & ~known].tolist())
    scored = good & known
    if not scored.any():
        return None if not unknown else {"n_evaluated": 0, "accuracy": None, "balanced_accuracy": None,
                                         "unknown_labels": dict(unknown)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predicted classes absent from the true labels are fine here
        balanced = balanced_accuracy_score(true[scored].astype(str), predicted[scored].astype(str))
    return {"n_evaluated": int(scored.sum()),
            "accuracy": float(accuracy_score(true[scored].astype(str), predicted[scored].astype(str))),
            "balanced_accuracy": float(balanced), "unknown_labels": dict(unknown)}


def _check_layers(codes_path, layers: list[str]) -> None:
    """The codes file must hold every layer the model was trained on; say which it has otherwise."""
    available = file_taps(codes_path)
    missing = [t for t in layers if t not in available]
    if missing:
        raise UsageError(f"the codes file {codes_path} has no {', '.join(missing)}; it has "
                         f"{', '.join(available) or 'no codes'} (the model was trained on {'+'.join(layers)}: "
                         "extract that layer, or predict from the images)")


def _scores(pipe, X: np.ndarray) -> np.ndarray:
    """One score per class in ``pipe.classes_`` order."""
    if hasattr(pipe, "decision_function"):
        d = pipe.decision_function(X)
        return np.column_stack([-d, d]) if d.ndim == 1 else d
    return pipe.predict_proba(X)


def extraction_settings(recipe: dict) -> dict:
    """extract_codes keyword arguments that reproduce ``recipe`` (weights are found the usual way)."""
    taps = recipe.get("taps", [])
    spatial = [t["pool"] for t in taps if len(t.get("shape", [])) > 1]
    prep = recipe.get("preprocess", {})
    return {"backbone": recipe["backbone"], "layers": tuple(t["name"] for t in taps),
            "pool": spatial[0] if spatial else "avg", "resize": prep.get("resize"), "crop": prep.get("crop"),
            "weights": "random" if recipe.get("weights_sha256") == "random" else None,
            "views": recipe.get("views", 1)}


@guards_output("out_csv", images="images", folder=False, run="run_dir")
def predict_images(run_dir: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike],
                   out_csv: str | os.PathLike, *, codes_out: str | os.PathLike | None = None,
                   weights: str | None = None, threshold: float | None = None, positive: str | None = None,
                   overwrite: bool = False, **run_options) -> dict:
    """Extract ``images`` with exactly the model's recipe, then predict (see predict_codes).

    ``images``: a folder, a CSV manifest, an image file, or a list of image files and folders
    (extract.reader.list_images); a single codes file is used as is. ``codes_out`` keeps the
    extracted codes (default: a temporary file). ``run_options`` (device, precision, batch_size,
    workers, progress, path_column, label_column, split_column) go to extract_codes; a checkpoint
    other than the model's is refused with the difference named.
    """
    import tempfile

    from extract import extract_codes

    sources = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    codes_files = [s for s in sources if is_codes_file(s)]
    if codes_files:
        if len(sources) > 1:
            raise UsageError(f"{codes_files[0]} is a codes file: give it alone, not with other images")
        return _predict_codes(run_dir, sources[0], out_csv, threshold=threshold, positive=positive)
    bundle = load_model(run_dir)
    threshold_rule(bundle, threshold, positive)
    recipe = bundle["layer_recipe"]
    settings = extraction_settings(recipe)
    if weights:
        settings["weights"] = weights
    with tempfile.TemporaryDirectory(prefix="cnncodes-predict-") as tmp:
        codes = Path(codes_out) if codes_out else Path(tmp) / "codes.h5"
        extraction = extract_codes(sources[0] if len(sources) == 1 else sources, codes, expected_recipe=recipe,
                                   **settings, **run_options)
        result = _predict_codes(run_dir, codes, out_csv, threshold=threshold, positive=positive)
    return {**result, "failures": extraction.failures, "codes": str(codes_out or "")}
