"""compare: every (classifier, layer) combination on the same cached codes, ranked in one table."""
from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from tqdm.auto import tqdm

from .data import file_taps, load_dataset, parse_layer_sets, resolve_layers
from .fileio import ensure_writable, write_files
from .models import DEFAULT_NORMALIZE
from .model_io import refuse_existing_runs
from .train import check_max_iter, check_options, fit_and_report, make_logger

DEFAULT_CLASSIFIERS = ("svm", "softmax", "knn", "rbf_svm")
COLUMNS = ("rank", "classifier", "layers", "balanced_accuracy", "macro_f1", "accuracy", "cv_score",
           "fit_time_s", "hyperparameter", "n_train", "n_test", "report_dir")


def compare(codes: str | os.PathLike, out_dir: str | os.PathLike, classifiers: Sequence[str] = DEFAULT_CLASSIFIERS,
            layers: str | Sequence[str | Sequence[str]] | None = None, normalize: str = DEFAULT_NORMALIZE,
            C: float | None = None, class_weight: str | dict | None = "balanced", sampling: str = "none",
            test: str | os.PathLike | None = None, test_fraction: float | None = None, seed: int = 0, cv: int = 5,
            progress: bool = True, n_jobs: int | None = None, max_iter: int | None = None,
            overwrite: bool = False) -> list[dict]:
    """Run ``classify_codes`` for each classifier on each layer (default: every tap, one at a time).

    ``layers``: ``"a, b+c"`` (commas separate runs, ``+`` concatenates taps) or a list of runs, each
    ``"a+b"`` or a list of taps; all are checked against the file before any training. Every run uses
    the same split and options and writes its own report directory ``out_dir/<classifier>__<layers>/``.
    Rows are ranked
    by their cross-validation score on the training split (ties: shorter fit time, then name), so the
    choice never looks at the held-out split; the held-out figures of every row are reported, and the
    top row's are the honest estimate of the pick. Rows without a CV score (``cv=0``) get no rank and
    follow in name order. The table goes to ``compare.md`` and ``compare.csv``; returns its rows in
    that order. ``fit_time_s`` includes cross-validation.
    """
    if not classifiers:
        raise ValueError("no classifier given")
    for name in classifiers:
        check_options(name, normalize, sampling)
    check_max_iter(max_iter)
    if C is not None and not 0 < C < float("inf"):
        raise ValueError(f"C must be a positive number, got {C}")
    if not (cv == 0 or cv >= 2):
        raise ValueError(f"cv must be 0 (no cross-validation) or at least 2 folds, got {cv}")
    layer_sets = check_layer_sets(codes, layers, test)
    refuse_existing_runs(out_dir, overwrite)  # per-run models and the table are replaced only when asked
    out_dir = ensure_writable(out_dir)
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
                                    n_jobs=n_jobs, max_iter=max_iter)
            rows.append({"classifier": name, "layers": "+".join(layer_set),
                         **{k: report[k] for k in ("balanced_accuracy", "macro_f1", "accuracy", "cv_score",
                                                   "fit_time_s", "hyperparameter", "n_train", "n_test")},
                         "report_dir": sub.name})
            bar.update()
    bar.close()
    rank_rows(rows)
    rows = [{k: row[k] for k in COLUMNS} for row in rows]
    write_files(out_dir, {"compare.csv": to_csv(rows), "compare.md": to_markdown(rows, codes)})
    return rows


def check_layer_sets(codes, layers, test=None) -> list[list[str]]:
    """Every run's taps, each checked against the codes file (and the test file) before any training."""
    layer_sets = [[t] for t in file_taps(codes)] if layers is None else parse_layer_sets(layers)
    for layer_set in layer_sets:
        resolve_layers(codes, layer_set)
        if test is not None:
            resolve_layers(test, layer_set)
    return layer_sets


def rank_rows(rows: list[dict]) -> None:
    """Sort in place by CV score on the training split (higher first; ties: faster fit, then name) and
    number the rows; rows without a CV score get rank None and come last, in name order."""
    def key(r: dict) -> tuple:
        scored = r["cv_score"] is not None
        return (not scored, -r["cv_score"] if scored else 0.0, r["fit_time_s"] if scored else 0.0,
                r["classifier"], r["layers"], r.get("sampling", ""))
    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["cv_score"] is not None else None


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], codes) -> str:
    """A Markdown table in rank order, with a header saying what ranks and what is only reported."""
    head = ["#", "classifier", "layers", "CV bal. acc. (train)", "held-out bal. acc.", "held-out macro-F1",
            "held-out accuracy", "fit time (s)", "hyper-parameter"]
    lines = [f"Comparison on `{codes}`: ranked by CV balanced accuracy on the training split (ties: shorter fit "
             "time, then name); the held-out columns are reported, not used to choose, so the top row's "
             "held-out figures are the honest estimate of the pick."]
    if any(r["rank"] is None for r in rows):
        lines.append("Rows without a CV score (cv=0) are not ranked (#: -) and follow in name order.")
    lines += ["", "| " + " | ".join(head) + " |",
              "|" + "|".join("---" if h in ("classifier", "layers", "hyper-parameter") else "---:" for h in head) + "|"]
    for r in rows:
        cv = "" if r["cv_score"] is None else f"{r['cv_score']:.4f}"
        rank = "-" if r["rank"] is None else r["rank"]
        lines.append(f"| {rank} | {r['classifier']} | {r['layers']} | {cv} | {r['balanced_accuracy']:.4f} | "
                     f"{r['macro_f1']:.4f} | {r['accuracy']:.4f} | {r['fit_time_s']:.2f} | {r['hyperparameter']} |")
    return "\n".join(lines) + "\n"
