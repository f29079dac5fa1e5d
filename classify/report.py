"""Metrics (scikit-learn's own functions) and the report dict every kind of run shares (render.py writes it
as files)."""
from __future__ import annotations

import datetime as _dt
import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, f1_score, precision_recall_curve, roc_auc_score, roc_curve)


# The report contract of every kind of run (codes, streamed, fine-tuned): these settings, in this order, then the
# counts, fit time and evaluate()'s metrics (see build_report)
REPORT_SETTINGS = ("codes", "test_codes", "split_source", "layers", "classifier", "normalize", "sampling", "seed",
                   "C", "best_params", "hyperparameter", "cv_score", "cv_folds", "cv_scoring", "cv_grid",
                   "n_failed_excluded", "n_unlabeled_excluded", "max_iter", "calibrated", "recipe", "versions")


def build_report(settings: dict, class_names: list[str], y_train: np.ndarray, y_test: np.ndarray,
                 y_pred: np.ndarray, *, class_weight, weights, fit_time: float, binary: dict | None, notes: list[str],
                 resampled_class_counts: dict[str, int] | None = None, extra: dict | None = None) -> dict:
    """The one report of classify, its streamed path and finetune: the same keys, so that runs of any kind compare.

    ``settings`` holds exactly REPORT_SETTINGS; ``weights`` are the applied class weights (by index, or a name
    such as "balanced"); ``resampled_class_counts`` defaults to the training counts; ``extra`` keys come last."""
    if settings.keys() != set(REPORT_SETTINGS):
        raise TypeError(f"report settings differ from the contract: {sorted(settings.keys() ^ set(REPORT_SETTINGS))}")
    s, names = settings, class_names
    train_counts = class_counts(y_train, names)
    return {
        "codes": s["codes"], "test_codes": s["test_codes"], "split_source": s["split_source"], "layers": s["layers"],
        "classifier": s["classifier"], "normalize": s["normalize"],
        "class_weight": class_weight if isinstance(class_weight, (str, type(None))) else dict(class_weight),
        "class_weight_applied": {names[k]: v for k, v in weights.items()} if isinstance(weights, dict) else weights,
        "sampling": s["sampling"], "seed": s["seed"], "C": s["C"], "best_params": s["best_params"],
        "hyperparameter": s["hyperparameter"], "cv_score": s["cv_score"], "cv_folds": s["cv_folds"],
        "cv_scoring": s["cv_scoring"], "cv_grid": s["cv_grid"],
        "n_train": int(len(y_train)), "n_test": int(len(y_test)),
        "n_failed_excluded": s["n_failed_excluded"], "n_unlabeled_excluded": s["n_unlabeled_excluded"],
        "train_class_counts": train_counts,
        "resampled_class_counts": train_counts if resampled_class_counts is None else resampled_class_counts,
        "test_class_counts": class_counts(y_test, names),
        "fit_time_s": round(fit_time, 4), "max_iter": s["max_iter"], "calibrated": s["calibrated"],
        **evaluate(y_test, y_pred, names),
        "binary": binary, "notes": notes, "recipe": s["recipe"], "versions": s["versions"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def class_counts(y: np.ndarray, names: list[str]) -> dict[str, int]:
    """Rows per class present in ``y``, by name, in class-index order."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(names))
    return {names[c]: int(n) for c, n in enumerate(counts) if n}


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class table and confusion matrix.

    The matrix covers every class seen in the true or predicted labels, in class-index order.
    """
    labels = sorted(set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist()))
    names = [class_names[i] for i in labels]
    table = classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True,
                                  zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true": see missing_test_classes
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {n: {"precision": float(table[n]["precision"]), "recall": float(table[n]["recall"]),
                          "f1": float(table[n]["f1-score"]), "support": int(table[n]["support"])} for n in names},
        "labels": names,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classification_report": classification_report(y_true, y_pred, labels=labels, target_names=names,
                                                        zero_division=0, digits=3),
    }


def missing_test_classes(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> list[str]:
    """A note for each predicted class that has no row in the test split (its recall is undefined)."""
    absent = sorted(set(np.unique(y_pred).tolist()) - set(np.unique(y_true).tolist()))
    return [f"class {class_names[c]!r} has no rows in the test split but was predicted {int(np.sum(y_pred == c))} "
            "time(s); balanced accuracy averages the recall of the classes present only" for c in absent]


def positive_scores(model, X: np.ndarray, positive: int) -> tuple[np.ndarray, str]:
    """A score per row that grows with the positive class: the decision value where the model has one
    (sign flipped when the positive class is the first), else the positive class probability."""
    classes = [int(c) for c in model.classes_]
    if hasattr(model, "decision_function"):
        d = np.asarray(model.decision_function(X), dtype=np.float64)
        return (d if positive == classes[1] else -d), "decision_function"
    return model.predict_proba(X)[:, classes.index(positive)], "predict_proba"


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, positive: int,
                   class_names: list[str], score_kind: str) -> dict:
    """Sensitivity, specificity, ROC AUC, average precision and both curves for a two-class task.

    ``scores`` rank the rows by how positive they look (positive_scores); the curves sweep a
    threshold over them. Sensitivity is the positive class's recall, specificity the other's.
    """
    is_pos, said_pos = y_true == positive, y_pred == positive
    negative = next((c for c in np.unique(np.concatenate([y_true, y_pred])).tolist() if c != positive), None)
    out = {"positive_class": class_names[positive],
           "negative_class": class_names[negative] if negative is not None else None, "score": score_kind,
           "sensitivity": _ratio(np.sum(is_pos & said_pos), np.sum(is_pos)),
           "specificity": _ratio(np.sum(~is_pos & ~said_pos), np.sum(~is_pos)),
           "roc_auc": None, "average_precision": None, "pr_curve": None, "roc_curve": None, "notes": []}
    if is_pos.all() or not is_pos.any():
        out["notes"].append("ROC AUC and average precision need both classes in the test split; not computed")
        return out
    precision, recall, pr_thresholds = precision_recall_curve(is_pos, scores)
    fpr, tpr, roc_thresholds = roc_curve(is_pos, scores)
    out.update(roc_auc=float(roc_auc_score(is_pos, scores)), average_precision=float(average_precision_score(is_pos, scores)),
               pr_curve={"precision": _finite(precision), "recall": _finite(recall), "thresholds": _finite(pr_thresholds)},
               roc_curve={"fpr": _finite(fpr), "tpr": _finite(tpr), "thresholds": _finite(roc_thresholds)})
    return out


def _ratio(num, den) -> float | None:
    return float(num / den) if den else None


def _finite(values: np.ndarray) -> list:
    """Rounded floats for JSON; infinities (roc_curve's first threshold) become None."""
    return [round(float(v), 6) if np.isfinite(v) else None for v in values]
