"""Metrics (scikit-learn's own functions) and the report files: JSON, text, CSV and PNG."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import (ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay, accuracy_score,
                             average_precision_score, balanced_accuracy_score, classification_report,
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


def summarize(report: dict) -> str:
    """One line for the command line: the headline numbers and the chosen hyper-parameter."""
    return (f"{model_name(report)}: balanced accuracy {report['balanced_accuracy']:.3f}, "
            f"macro-F1 {report['macro_f1']:.3f}, accuracy {report['accuracy']:.3f} "
            f"({report['n_test']} test / {report['n_train']} train images; {report['hyperparameter']}"
            + (f", {_score_name(report)} {report['cv_score']:.3f}" if report.get("cv_score") is not None else "") + ")")


def model_name(report: dict) -> str:
    """``svm on block4``; a fine-tuned network has no layer: ``finetune (mobilenet_v2)``."""
    ft = report.get("finetune")
    if ft:
        return f"{report['classifier']} ({ft['options']['backbone']})"
    return f"{report['classifier']} on {'+'.join(report['layers'])}"


def _score_name(report: dict) -> str:
    """What chose the hyper-parameter: cross-validation, or a fine-tune's validation set."""
    return "validation" if report.get("finetune") else "CV"


def render_text(report: dict) -> str:
    """The human-readable report: settings, summary numbers, per-class table, notes."""
    lines = [*_source_lines(report),
             f"normalize:         {report['normalize']}",
             f"class weight:      {report['class_weight']}",
             f"sampling:          {report['sampling']}",
             f"train / test rows: {report['n_train']} / {report['n_test']}",
             f"train counts:      {_counts_text(report.get('train_class_counts'))}",
             f"resampled counts:  {_counts_text(report.get('resampled_class_counts'))}"
             + (" (no resampling)" if report.get("sampling") == "none" else " (what the classifier was fitted on)"),
             f"test counts:       {_counts_text(report.get('test_class_counts'))}",
             f"excluded rows:     {report['n_failed_excluded']} failed, {report['n_unlabeled_excluded']} unlabeled",
             "",
             f"accuracy:          {report['accuracy']:.4f}",
             f"balanced accuracy: {report['balanced_accuracy']:.4f}",
             f"macro F1:          {report['macro_f1']:.4f}"]
    if report.get("cv_score") is not None:
        lines.append(f"{_score_name(report) + ' score:':<19}{report['cv_score']:.4f}"
                     + (" (balanced accuracy, best epoch)" if report.get("finetune") else ""))
    lines += _binary_lines(report.get("binary"))
    lines += ["", report["classification_report"].rstrip(), "", "confusion matrix (rows true, columns predicted):",
              confusion_text(np.array(report["confusion_matrix"]), report["labels"])]
    if report.get("notes"):
        lines += ["", "notes:"] + [f"  - {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _source_lines(report: dict) -> list[str]:
    """Where the model came from: codes file, test data, layers and classifier; for a fine-tuned network
    its images and the validation set that chose the epoch (it has no codes file and no layer)."""
    ft = report.get("finetune")
    if ft:
        chosen = (f"epoch chosen on {ft['n_val']} validation images: {ft['val_source']}" if ft["n_val"]
                  else "the last epoch: no validation set, no validation score")
        return [f"images:            {ft['images']} (fine-tuned network; no codes file)",
                f"test data:         {report['split_source']}",
                f"classifier:        {report['classifier']} ({report['hyperparameter']}, {chosen})"]
    return [f"codes file:        {report['codes']}",
            f"test data:         {report['split_source']}",
            f"layers:            {' + '.join(report['layers'])}",
            f"classifier:        {report['classifier']} ({report['hyperparameter']}, "
            + (f"chosen by {report['cv_folds']}-fold CV on {report['cv_scoring']})" if report['cv_folds']
               else "fixed, no cross-validation)")
            + (", sigmoid-calibrated probabilities" if report.get("calibrated") else "")]


def _counts_text(counts: dict | None) -> str:
    return ", ".join(f"{name} {n}" for name, n in (counts or {}).items()) or "-"


def _binary_lines(binary: dict | None) -> list[str]:
    if not binary:
        return []
    def fmt(v):
        return "-" if v is None else f"{v:.4f}"
    pos = binary["positive_class"]
    other = binary.get("negative_class") or "the other class"
    return ["", f"positive class:    {pos} (sensitivity: recall of {pos}; specificity: recall of {other})",
            f"sensitivity:       {fmt(binary['sensitivity'])}",
            f"specificity:       {fmt(binary['specificity'])}",
            f"ROC AUC:           {fmt(binary['roc_auc'])} (from {binary['score']} on the test split)",
            f"average precision: {fmt(binary['average_precision'])} (curves: pr_curve.png, roc.png)"]


def confusion_text(cm: np.ndarray, names: list[str]) -> str:
    width = max([len(n) for n in names] + [len(str(int(cm.max(initial=0))))]) + 1
    rows = [" " * width + "".join(n.rjust(width) for n in names)]
    rows += [name.ljust(width) + "".join(str(v).rjust(width) for v in row) for name, row in zip(names, cm)]
    return "\n".join(rows)


def confusion_csv(cm: np.ndarray, names: list[str]) -> str:
    """Header row of predicted class names; each row starts with the true class name."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true\\predicted", *names])
    for name, row in zip(names, cm):
        writer.writerow([name, *(int(v) for v in row)])
    return buf.getvalue()


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    """Counts and row-normalized (recall) confusion matrices side by side, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.45 * n, 24)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size + 1), layout="constrained")
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    show_values = n <= 30
    for ax, matrix, fmt, label in ((axes[0], cm, "d", "counts"), (axes[1], norm, ".2f", "row-normalized (recall)")):
        ConfusionMatrixDisplay(matrix, display_labels=names).plot(
            ax=ax, cmap="Blues", colorbar=False, include_values=show_values, values_format=fmt,
            xticks_rotation="vertical" if max(map(len, names), default=0) > 3 else "horizontal")
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_curve(binary: dict, kind: str, path: Path, title: str = "") -> None:
    """The precision-recall (``pr``) or ROC (``roc``) curve of the positive class, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    name = f"{binary['positive_class']} vs {binary.get('negative_class') or 'rest'}"
    if kind == "pr":
        curve = binary["pr_curve"]
        PrecisionRecallDisplay(precision=np.array(curve["precision"]), recall=np.array(curve["recall"]),
                               average_precision=binary["average_precision"], name=name).plot(ax=ax)
    else:
        curve = binary["roc_curve"]
        RocCurveDisplay(fpr=np.array(curve["fpr"]), tpr=np.array(curve["tpr"]), roc_auc=binary["roc_auc"],
                        name=name).plot(ax=ax, plot_chance_level=True)
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def report_files(report: dict) -> dict:
    """Writers for report.json, report.txt, confusion.csv, confusion.png and, for two classes,
    pr_curve.png and roc.png (for fileio.write_files)."""
    cm, names = np.array(report["confusion_matrix"]), report["labels"]
    title = f"{model_name(report)}: balanced accuracy {report['balanced_accuracy']:.3f}"
    files = {"report.json": json.dumps(report, indent=2, default=_json_default) + "\n",
             "report.txt": render_text(report),
             "confusion.csv": confusion_csv(cm, names),
             "confusion.png": lambda path: plot_confusion(cm, names, path, title)}
    binary = report.get("binary") or {}
    if binary.get("pr_curve"):
        short = f"{model_name(report)} (test split)"
        files["pr_curve.png"] = lambda path: plot_curve(binary, "pr", path, short)
        files["roc.png"] = lambda path: plot_curve(binary, "roc", path, short)
    return files


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
