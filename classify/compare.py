"""compare: every (classifier, layer) combination on the same cached codes, ranked in one table."""
from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from tqdm.auto import tqdm

from .data import file_taps, load_dataset
from .fileio import ensure_writable, write_files
from .models import DEFAULT_NORMALIZE
from .train import make_logger, check_options, fit_and_report

DEFAULT_CLASSIFIERS = ("svm", "softmax", "knn", "rbf_svm")
COLUMNS = ("rank", "classifier", "layers", "balanced_accuracy", "macro_f1", "accuracy", "cv_score",
           "fit_time_s", "hyperparameter", "n_train", "n_test", "report_dir")


def compare(codes: str | os.PathLike, out_dir: str | os.PathLike, classifiers: Sequence[str] = DEFAULT_CLASSIFIERS,
            layers: Sequence[str | Sequence[str]] | None = None, normalize: str = DEFAULT_NORMALIZE,
            C: float | None = None, class_weight: str | dict | None = "balanced", sampling: str = "none",
            test: str | os.PathLike | None = None, test_fraction: float | None = None, seed: int = 0, cv: int = 5,
            progress: bool = True, n_jobs: int | None = None) -> list[dict]:
    """Run ``classify_codes`` for each classifier on each layer (default: every tap, one at a time).

    A layer entry may be ``"a+b"`` or a list to concatenate taps. Every run uses the same split and
    options and writes its own report directory ``out_dir/<classifier>__<layers>/``; the ranking
    (balanced accuracy, then macro-F1, best first) goes to ``compare.md`` and ``compare.csv``.
    Returns the table rows in that order. ``fit_time_s`` includes cross-validation.
    """
    for name in classifiers:
        check_options(name, normalize, sampling)
    out_dir = ensure_writable(out_dir)
    layer_sets = [[t] for t in file_taps(codes)] if layers is None else [
        t.split("+") if isinstance(t, str) else list(t) for t in layers]
    log = make_logger(False)
    rows = []
    bar = tqdm(total=len(layer_sets) * len(classifiers), desc="compare", disable=not progress)
    for layer_set in layer_sets:
        data = load_dataset(codes, layer_set, test=test, test_fraction=test_fraction, seed=seed)
        for name in classifiers:
            bar.set_postfix_str(f"{name} on {'+'.join(layer_set)}")
            sub = out_dir / f"{name}__{'+'.join(layer_set)}"
            report = fit_and_report(data, ensure_writable(sub), classifier=name, normalize=normalize, C=C,
                                    class_weight=class_weight, sampling=sampling, seed=seed, cv=cv, log=log,
                                    n_jobs=n_jobs)
            rows.append({"classifier": name, "layers": "+".join(layer_set),
                         **{k: report[k] for k in ("balanced_accuracy", "macro_f1", "accuracy", "cv_score",
                                                   "fit_time_s", "hyperparameter", "n_train", "n_test")},
                         "report_dir": sub.name})
            bar.update()
    bar.close()
    rows.sort(key=lambda r: (-r["balanced_accuracy"], -r["macro_f1"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    rows = [{k: row[k] for k in COLUMNS} for row in rows]
    write_files(out_dir, {"compare.csv": to_csv(rows), "compare.md": to_markdown(rows, codes)})
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], codes) -> str:
    """A Markdown table, best first."""
    head = ["#", "classifier", "layers", "balanced acc.", "macro-F1", "accuracy", "CV score", "fit time (s)",
            "hyper-parameter"]
    lines = [f"Comparison on `{codes}` (best first: balanced accuracy, then macro-F1)", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---:" if h not in ("classifier", "layers", "hyper-parameter")
                                                           else "---" for h in head) + "|"]
    for r in rows:
        cv = "" if r["cv_score"] is None else f"{r['cv_score']:.4f}"
        lines.append(f"| {r['rank']} | {r['classifier']} | {r['layers']} | {r['balanced_accuracy']:.4f} | "
                     f"{r['macro_f1']:.4f} | {r['accuracy']:.4f} | {cv} | {r['fit_time_s']:.2f} | {r['hyperparameter']} |")
    return "\n".join(lines) + "\n"
