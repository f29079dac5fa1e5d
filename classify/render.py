"""The report as files (JSON, text, CSV and PNG plots) and as one line for the command line."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay


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
