"""Metrics (scikit-learn's own functions) and the report files: JSON, text, CSV and PNG."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import (ConfusionMatrixDisplay, accuracy_score, balanced_accuracy_score,
                             classification_report, confusion_matrix, f1_score)


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class table and confusion matrix.

    The matrix covers every class seen in the true or predicted labels, in class-index order.
    """
    labels = sorted(set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist()))
    names = [class_names[i] for i in labels]
    table = classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True,
                                  zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {n: {"precision": float(table[n]["precision"]), "recall": float(table[n]["recall"]),
                          "f1": float(table[n]["f1-score"]), "support": int(table[n]["support"])} for n in names},
        "labels": names,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classification_report": classification_report(y_true, y_pred, labels=labels, target_names=names,
                                                        zero_division=0, digits=3),
    }


def summarize(report: dict) -> str:
    """One line for the command line: the headline numbers and the chosen hyper-parameter."""
    layers = "+".join(report["layers"])
    return (f"{report['classifier']} on {layers}: balanced accuracy {report['balanced_accuracy']:.3f}, "
            f"macro-F1 {report['macro_f1']:.3f}, accuracy {report['accuracy']:.3f} "
            f"({report['n_test']} test / {report['n_train']} train images; {report['hyperparameter']}"
            + (f", CV {report['cv_score']:.3f}" if report.get("cv_score") is not None else "") + ")")


def render_text(report: dict) -> str:
    """The human-readable report: settings, summary numbers, per-class table, notes."""
    lines = [f"codes file:        {report['codes']}",
             f"test data:         {report['split_source']}",
             f"layers:            {' + '.join(report['layers'])}",
             f"classifier:        {report['classifier']} ({report['hyperparameter']}, chosen by "
             f"{report['cv_folds'] or 'no'}-fold CV on {report['cv_scoring']})",
             f"normalize:         {report['normalize']}",
             f"class weight:      {report['class_weight']}",
             f"sampling:          {report['sampling']}",
             f"train / test rows: {report['n_train']} / {report['n_test']}",
             f"excluded rows:     {report['n_failed_excluded']} failed, {report['n_unlabeled_excluded']} unlabeled",
             "",
             f"accuracy:          {report['accuracy']:.4f}",
             f"balanced accuracy: {report['balanced_accuracy']:.4f}",
             f"macro F1:          {report['macro_f1']:.4f}"]
    if report.get("cv_score") is not None:
        lines.append(f"CV score:          {report['cv_score']:.4f}")
    lines += ["", report["classification_report"].rstrip(), "", "confusion matrix (rows true, columns predicted):",
              confusion_text(np.array(report["confusion_matrix"]), report["labels"])]
    if report.get("notes"):
        lines += ["", "notes:"] + [f"  - {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


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


def report_files(report: dict) -> dict:
    """Writers for report.json, report.txt, confusion.csv and confusion.png (for fileio.write_files)."""
    cm, names = np.array(report["confusion_matrix"]), report["labels"]
    title = f"{report['classifier']} on {'+'.join(report['layers'])}: balanced accuracy {report['balanced_accuracy']:.3f}"
    return {"report.json": json.dumps(report, indent=2, default=_json_default) + "\n",
            "report.txt": render_text(report),
            "confusion.csv": confusion_csv(cm, names),
            "confusion.png": lambda path: plot_confusion(cm, names, path, title)}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
