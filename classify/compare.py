"""compare: every (classifier, layer) combination on the same cached codes, ranked in one table."""
from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from cnncodes.extract.config import check_config
from cnncodes.extract.errors import UsageError
from cnncodes.extract.names import layer_runs
from cnncodes.extract.outputs import guards_output
from cnncodes.extract.progress import progress_bar

from .data import codes_shape, file_taps, resolve_layers
from .fileio import ensure_writable, write_files
from .options import DEFAULT_CLASSIFIERS, DEFAULT_NORMALIZE, CompareConfig
from .split import load_dataset
from . import stream, stream_cv, train
from .stream import check_streamable, classify_streamed, should_stream
from .train import check_options, fit_and_report, make_logger

COLUMNS = ("rank", "classifier", "layers", "balanced_accuracy", "macro_f1", "accuracy", "cv_score",
           "fit_time_s", "hyperparameter", "n_train", "n_test", "report_dir",
           "sampling", "minority_class", "minority_recall")  # added last, so older readers keep working


@guards_output("out_dir")
def compare(codes: str | os.PathLike, out_dir: str | os.PathLike, classifiers: Sequence[str] = DEFAULT_CLASSIFIERS,
            layers: str | Sequence[str | Sequence[str]] | None = None, normalize: str = DEFAULT_NORMALIZE,
            C: float | None = None, class_weight: str | dict | None = "balanced",
            sampling: str | Sequence[str] = "none", test: str | os.PathLike | None = None,
            test_fraction: float | None = None, seed: int = 0, cv: int = 5, progress: bool = True,
            n_jobs: int | None = None, max_iter: int | None = None, overwrite: bool = False,
            max_memory: str | int | None = None) -> list[dict]:
    """Run ``classify_codes`` for each classifier on each layer (default: every tap, one at a time) and
    each sampling mode (``"none,over,hybrid"`` or a list compares them; default one mode).

    ``layers``: ``"a, b+c"`` (commas separate runs, ``+`` concatenates taps) or a list of runs, each
    ``"a+b"`` or a list of taps; all are checked against the file before any training. Every run uses
    the same split and options and writes its own report directory ``out_dir/<classifier>__<layers>/``
    (``__<sampling>`` appended when several modes are compared). Rows are ranked by their
    cross-validation score on the training split, every candidate scored on the same folds of the same
    rows (``common_cv_rows``; ties: the simpler configuration, see ``rank_rows``), so the choice never
    looks at the held-out split; the held-out figures of every row are reported, and the
    top row's are the honest estimate of the pick. Rows without a CV score (``cv=0``) get no rank and
    follow in name order. ``minority_recall`` is the held-out recall of ``minority_class``, the class
    with the fewest training rows. The table goes to ``compare.md`` and ``compare.csv``; returns its
    rows in that order. ``fit_time_s`` includes cross-validation.
    """
    if not classifiers:
        raise UsageError("no classifier given")
    samplings = sampling_modes(sampling)
    for name in classifiers:
        for mode in samplings:
            check_options(name, normalize, mode)
    check_config(CompareConfig, {"C": C, "cv": cv, "test_fraction": test_fraction, "max_iter": max_iter})
    layer_sets = check_layer_sets(codes, layers, test)
    streamed = [should_stream(codes, layer_set, max_memory) for layer_set in layer_sets]
    if any(streamed):
        for name in classifiers:
            for mode in samplings:
                check_streamable(name, mode)
    out_dir = ensure_writable(out_dir)
    log = make_logger(False)
    dims = [codes_shape(codes, layer_set)[1] for layer_set in layer_sets]
    cv_rows = common_cv_rows(classifiers, dims, streamed, max_memory, cv)
    rows = []
    runs = [(name, mode) for name in classifiers for mode in samplings]
    bar = progress_bar(total=len(layer_sets) * len(runs), desc="compare", disable=not progress)
    for layer_set, streams, dim in zip(layer_sets, streamed, dims):
        data = None if streams else load_dataset(codes, layer_set, test=test, test_fraction=test_fraction, seed=seed)
        for name, mode in runs:
            layers_name = "+".join(layer_set)
            bar.set_postfix_str(f"{name} on {layers_name}" + (f", {mode}" if len(samplings) > 1 else ""))
            sub = out_dir / (f"{name}__{layers_name}" + (f"__{mode}" if len(samplings) > 1 else ""))
            options = dict(classifier=name, normalize=normalize, C=C, class_weight=class_weight, sampling=mode,
                           seed=seed, cv=cv, log=log, cv_max_rows=cv_rows)
            if streams:
                report = classify_streamed(codes, ensure_writable(sub), layers=layer_set, test=test,
                                           test_fraction=test_fraction, max_memory=max_memory, **options)
            else:
                report = fit_and_report(data, ensure_writable(sub), n_jobs=n_jobs, max_iter=max_iter, **options)
            rows.append({"classifier": name, "layers": layers_name,
                         **{k: report[k] for k in ("balanced_accuracy", "macro_f1", "accuracy", "cv_score",
                                                   "fit_time_s", "hyperparameter", "n_train", "n_test")},
                         "report_dir": sub.name, "sampling": mode, **minority_recall(report), "dim": dim})
            bar.update()
    bar.close()
    rank_rows(rows)
    rows = [{k: row[k] for k in COLUMNS} for row in rows]
    write_files(out_dir, {"compare.csv": to_csv(rows), "compare.md": to_markdown(rows, codes)})
    return rows


def sampling_modes(sampling: str | Sequence[str]) -> list[str]:
    """``"none, over"`` or a list -> the sampling modes to compare, each once, in the given order."""
    items = sampling.split(",") if isinstance(sampling, str) else list(sampling)
    modes = list(dict.fromkeys(m.strip() for m in items if m.strip()))
    if not modes:
        raise UsageError(f"sampling {sampling!r} names no mode")
    return modes


def minority_recall(report: dict) -> dict:
    """The class with the fewest training rows and its held-out recall (None when the held-out split has
    none of it); both None when several classes share the fewest rows: then no class is the minority."""
    counts = report["train_class_counts"]
    fewest = [name for name, n in counts.items() if n == min(counts.values())]
    if len(fewest) > 1:
        return {"minority_class": None, "minority_recall": None}
    minority = fewest[0]
    recall = report["per_class"].get(minority, {}).get("recall")
    has_rows = report.get("test_class_counts", {}).get(minority, 0) > 0
    return {"minority_class": minority, "minority_recall": recall if has_rows else None}


def check_layer_sets(codes, layers, test=None) -> list[list[str]]:
    """Every run's taps, each checked against the codes file (and the test file) before any training."""
    layer_sets = [[t] for t in file_taps(codes)] if layers is None else layer_runs(layers)
    for layer_set in layer_sets:
        resolve_layers(codes, layer_set)
        if test is not None:
            resolve_layers(test, layer_set)
    return layer_sets


def common_cv_rows(classifiers: Sequence[str], dims: Sequence[int], streamed: Sequence[bool],
                   max_memory: str | int | None, cv: int) -> int:
    """The CV row limit every candidate gets: the smallest of their own limits (in memory: the classifier's;
    streamed: the budget's for that dimension), so that all are scored on the same folds of the same rows."""
    limits = [train.cv_row_limit(name) for name in classifiers] if not all(streamed) else []
    budget = stream.budget_bytes(max_memory)
    limits += [stream_cv.cv_row_limit(budget, dim, max(cv, 2)) for dim, s in zip(dims, streamed) if s]
    return min(limits)


def rank_rows(rows: list[dict]) -> None:
    """Sort in place by CV score on the training split (higher first) and number the rows. Ties go to the
    simpler configuration: no sampling before sampling, fewer layers, smaller dimension, then the names
    (deterministic: never the fit time, which is noise). Rows without a CV score get rank None and come
    last, in name order."""
    def key(r: dict) -> tuple:
        names = (r["classifier"], r["layers"], r.get("sampling", ""))
        if r["cv_score"] is None:
            return (True, 0.0, False, 0, 0, *names)
        simpler = (r.get("sampling", "none") != "none", r["layers"].count("+"), r.get("dim", 0))
        return (False, -round(r["cv_score"], 12), *simpler, *names)
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
    several = len({r["sampling"] for r in rows}) > 1
    minority = rows[0]["minority_class"] if rows else None  # None: no single class has the fewest rows
    head = ["#", "classifier", "layers", *(["sampling"] if several else []), "CV bal. acc. (train)",
            "held-out bal. acc.", "held-out macro-F1", "held-out accuracy", *(["minority recall"] if minority else []),
            "fit time (s)", "hyper-parameter"]
    lines = [f"Comparison on `{codes}`: ranked by CV balanced accuracy on the training split (ties: no sampling, "
             "fewer layers, smaller dimension, then name); the held-out columns are reported, not used to choose, "
             "so the top row's held-out figures are the honest estimate of the pick."]
    if minority:
        lines.append(f"Minority recall: held-out recall of {minority}, the class with the fewest training rows.")
    if any(r["rank"] is None for r in rows):
        lines.append("Rows without a CV score (cv=0) are not ranked (#: -) and follow in name order.")
    text = ("classifier", "layers", "sampling", "hyper-parameter")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join("---" if h in text else "---:" for h in head) + "|"]
    for r in rows:
        cells = ["-" if r["rank"] is None else r["rank"], r["classifier"], r["layers"],
                 *([r["sampling"]] if several else []), _figure(r["cv_score"]), _figure(r["balanced_accuracy"]),
                 _figure(r["macro_f1"]), _figure(r["accuracy"]), *([_figure(r["minority_recall"])] if minority else []),
                 f"{r['fit_time_s']:.2f}", r["hyperparameter"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
