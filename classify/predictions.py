"""Per-row predictions of a codes model (classes, scores, probabilities, errors), the two-class threshold rule
shared with fine-tuned networks, the CSV rows and the evaluation on known labels: the in-memory and the
streamed predict (and finetune's) share them."""
from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from cnncodes.extract.errors import UsageError

from .data import class_names_of


@dataclass
class Predictions:
    """Per-row outputs; rows that are not ``good`` (failed image, non-finite codes) hold blanks/NaN."""

    classes: list[str]
    good: np.ndarray
    errors: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray
    probs: np.ndarray | None  # None when the model gives no probabilities


def predict_rows(bundle: dict, cf, X: np.ndarray, rule, threshold: float | None) -> Predictions:
    """The codes model's predictions for the rows ``X`` of ``cf`` (``rule``: threshold_rule's, or None)."""
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


def csv_text(paths, pred: Predictions, true: np.ndarray | None, header: bool = True) -> str:
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


def _scores(pipe, X: np.ndarray) -> np.ndarray:
    """One score per class in ``pipe.classes_`` order."""
    if hasattr(pipe, "decision_function"):
        d = pipe.decision_function(X)
        return np.column_stack([-d, d]) if d.ndim == 1 else d
    return pipe.predict_proba(X)
