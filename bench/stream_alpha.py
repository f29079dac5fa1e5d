#!/usr/bin/env python
"""Streamed alpha and the CV sample, chosen on training data only (issue 22, item 13).

* ``grid``: each CODES.h5[:LAYER], svm and softmax: the in-memory classifier, then the streamed one (a budget
  one byte under the in-memory estimate, so it streams with the largest CV sample that budget allows;
  ``--budget-share 0.5``: half the estimate, a smaller sample) with the
  previous fixed alpha grids (svm 1e-7 ... 1e-1, softmax 1e-6 ... 1e-2) and with the current rule
  (``stream_cv.search_alpha``: 1e-6 ... 1e-2, widened while CV prefers an edge). Prints the CV score that
  chose the hyper-parameter, the value, the values tried and the held-out score (reported only).
* ``sample``: on ``--sample-codes`` (training split only), the hyper-parameter each CV chooses and the
  Spearman correlation of its CV scores with the full training CV's, for stratified samples of
  ``--fractions`` of the training rows (``cv_sample``, the capped CV's rows) and for the full CV under
  other fold seeds (the noise the choice has anyway), for the in-memory svm and softmax and the streamed svm.

Usage::

    python bench/stream_alpha.py hym.h5 digits.h5:penultimate digits.h5:block4 --sample-codes sign.h5:penultimate
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)

import numpy as np  # noqa: E402
from imblearn.pipeline import Pipeline  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from cnncodes.classify import classify_codes, stream, stream_cv  # noqa: E402
from cnncodes.classify.cv import CV_SCORING, cv_sample, cv_splitter  # noqa: E402
from cnncodes.classify.data import resolve_layers  # noqa: E402
from cnncodes.classify.models import (build_pipeline, class_weight_values, classifier_spec,  # noqa: E402
                                      make_normalizer, parse_class_weight)
from cnncodes.classify.split import load_dataset  # noqa: E402

OLD_GRIDS = {"svm": (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), "softmax": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)}


def streamed(codes: str, layer: str | None, out: Path, classifier: str, grid, bounds, share: float) -> dict:
    """classify_codes, streamed (a budget of ``share`` x the in-memory estimate, one byte under it at 1), with
    the alpha search's start grid and bounds set to ``grid`` / ``bounds``."""
    saved = stream_cv.ALPHA_GRID, stream_cv.ALPHA_BOUNDS
    stream_cv.ALPHA_GRID, stream_cv.ALPHA_BOUNDS = grid, bounds
    try:
        budget = min(int(share * stream.in_memory_bytes(codes, resolve_layers(codes, layer))),
                     stream.in_memory_bytes(codes, resolve_layers(codes, layer)) - 1)
        return run(codes, layer, out, classifier, max_memory=budget)
    finally:
        stream_cv.ALPHA_GRID, stream_cv.ALPHA_BOUNDS = saved


def run(codes, layer, out, classifier, **kw) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = classify_codes(codes, out, layers=layer, classifier=classifier, progress=False, **kw)
    (value,) = rep["best_params"].values()
    tried = next(iter(rep["cv_grid"].values()), [])
    sample = next((n.split(" CV on ")[1].split(" (")[0] for n in rep["notes"] if n.startswith("alpha chosen")), "")
    return {"seconds": time.perf_counter() - t0, "value": value, "cv": rep["cv_score"], "tried": tried,
            "test": rep["balanced_accuracy"], "sample": sample}


def grid_table(files: list[str], tmp: Path, share: float, full_range: bool) -> None:
    print("| codes | classifier | in memory: C, CV, held-out | streamed, previous grid: alpha, CV, held-out | "
          "streamed, current rule: alpha (alphas tried), CV, held-out |"
          + (" streamed, every decade within the bounds: alpha, CV, held-out |" if full_range else "")
          + "\n|---|---|---|---|---|" + ("---|" if full_range else ""))
    for n, item in enumerate(files):
        codes, _, layer = item.partition(":")
        for clf in ("svm", "softmax"):
            mem = run(codes, layer or None, tmp / f"m{n}{clf}", clf)
            old = streamed(codes, layer or None, tmp / f"o{n}{clf}", clf, OLD_GRIDS[clf],
                           (OLD_GRIDS[clf][0], OLD_GRIDS[clf][-1]), share)
            new = streamed(codes, layer or None, tmp / f"n{n}{clf}", clf, stream_cv.ALPHA_GRID,
                           stream_cv.ALPHA_BOUNDS, share)
            tried = ", ".join(f"{a:g}" for a in new["tried"])
            if full_range:
                lo, hi = (round(np.log10(b)) for b in stream_cv.ALPHA_BOUNDS)
                every = streamed(codes, layer or None, tmp / f"f{n}{clf}", clf,
                                 tuple(10.0 ** e for e in range(lo, hi + 1)), stream_cv.ALPHA_BOUNDS, share)
                extra = f" {every['value']:g}, {every['cv']:.4f}, {every['test']:.4f} ({every['seconds']:.1f} s) |"
            print(f"| {Path(codes).stem}:{layer or '(first)'} | {clf} | C={mem['value']:g}, {mem['cv']:.4f}, "
                  f"{mem['test']:.4f} ({mem['seconds']:.1f} s) | {old['value']:g}, {old['cv']:.4f}, {old['test']:.4f} "
                  f"({old['seconds']:.1f} s) | {new['value']:g} ({tried}), {new['cv']:.4f}, {new['test']:.4f} "
                  f"({new['seconds']:.1f} s) |{extra if full_range else ''}", flush=True)
        print(f"  CV rows of the streamed runs: {new['sample']}")


def cv_scores(kind: str, X, y, seed: int, folds: int) -> dict[float, float]:
    """Every value's mean CV score on (X, y) as the shipped CV computes it: the in-memory pipeline over its C
    grid, or the streamed CV model (stateless power normalization, then per-fold scaling and capped SGD)
    over the alphas ``search_alpha`` tries."""
    weights = parse_class_weight("balanced", [])
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "streamed svm":
            Xn = make_normalizer("power").fit_transform(X)
            model = Pipeline([("scale", StandardScaler()), ("clf", stream_cv.make_sgd(
                "svm", class_weight_values(weights, y), seed).set_params(max_iter=stream_cv.CV_MAX_EPOCHS))])
            scores = {}

            def score(alphas):
                res = GridSearchCV(model, {"clf__alpha": alphas}, scoring=CV_SCORING, cv=cv_splitter(folds, seed),
                                   refit=False).fit(Xn, y).cv_results_["mean_test_score"]
                scores.update(zip(alphas, res))
                return res
            stream_cv.search_alpha(score, lambda _: None, stream_cv.ALPHA_GRID, stream_cv.ALPHA_BOUNDS)
            return scores
        spec = classifier_spec(kind)
        pipe = build_pipeline(kind, "power", "none", weights, seed).set_params(
            **{f"clf__{k}": v for k, v in (spec.cv_params or {}).items()})
        res = GridSearchCV(pipe, {"clf__C": list(spec.grid)}, scoring=CV_SCORING, cv=cv_splitter(folds, seed),
                           refit=False, error_score="raise").fit(X, y).cv_results_["mean_test_score"]
        return dict(zip(spec.grid, res))


def sample_table(item: str, fractions: list[float], seeds: list[int], kinds: list[str], folds: int = 5) -> None:
    codes, _, layer = item.partition(":")
    data = load_dataset(codes, layer or None, test=None, test_fraction=None, seed=0)
    X, y = data.X_train, data.y_train
    print(f"\n{Path(codes).stem}:{layer or '(first)'}: {len(y):,} training rows x {X.shape[1]:,}, {folds}-fold CV, "
          f"training split only (the held-out rows are never used)")
    print("| CV | rows | chosen per seed " + " / ".join(map(str, seeds)) + " | same choice as the full CV (seed 0) | "
          "Spearman with the full CV's scores (seed 0), mean | full-CV score lost by its choice, mean | "
          "seconds per CV |\n|---|---|---|---:|---:|---:|---:|")
    for kind in kinds:
        t0 = time.perf_counter()
        full = cv_scores(kind, X, y, seeds[0], folds)
        full_t = time.perf_counter() - t0
        best = max(full, key=full.get)
        rows = [("full, other fold seeds", len(y), seeds[1:], lambda s: (X, y), full_t)]
        rows += [(f"sample {f:g}", int(f * len(y)), seeds, lambda s, f=f: tuple(
            a[cv_sample(y, int(f * len(y)), folds, s)[0]] for a in (X, y)), None) for f in fractions]
        print(f"| {kind}, full | {len(y):,} | {best:g} (CV {full[best]:.4f}) | | | | {full_t:.1f} |", flush=True)
        for name, n, use, data_for, _ in rows:
            chosen, rhos, spent = [], [], []
            for s in use:
                Xs, ys = data_for(s)
                t0 = time.perf_counter()
                got = cv_scores(kind, Xs, ys, s, folds)
                spent.append(time.perf_counter() - t0)
                chosen.append(max(got, key=got.get))
                common_values = sorted(set(got) & set(full))
                rhos.append(spearmanr([got[v] for v in common_values], [full[v] for v in common_values])[0])
            same = sum(c == best for c in chosen)
            print(f"| {kind}, {name} | {n:,} | {' / '.join(f'{c:g}' for c in chosen)} | {same} of {len(chosen)} | "
                  f"{np.nanmean(rhos):.2f} | {np.mean([full[best] - full.get(c, np.nan) for c in chosen]):.4f} | "
                  f"{np.mean(spent):.1f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", metavar="CODES.h5[:LAYER]", help="codes for the grid comparison")
    ap.add_argument("--sample-codes", action="append", default=[], metavar="CODES.h5[:LAYER]",
                    help="codes for the CV sample comparison (repeatable)")
    ap.add_argument("--fractions", default="0.25,0.5", help="sample sizes, as fractions of the training rows")
    ap.add_argument("--budget-share", type=float, default=1.0,
                    help="streamed budget as a share of the in-memory estimate (default: one byte under it)")
    ap.add_argument("--full-range", action="store_true",
                    help="also streamed with every decade within the search's bounds (1e-8 ... 1) as a fixed grid")
    ap.add_argument("--kinds", default="svm,softmax,streamed svm", help="which CVs the sample comparison runs")
    ap.add_argument("--seeds", default="0,1,2", help="sample and fold seeds")
    args = ap.parse_args(argv)
    print(f"stream alpha; {common.cpu_line()}; {common.load_average()}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-alpha-") as tmp:
        if args.files:
            grid_table(args.files, Path(tmp), args.budget_share, args.full_range)
    for item in args.sample_codes:
        sample_table(item, [float(f) for f in args.fractions.split(",")], [int(s) for s in args.seeds.split(",")],
                     args.kinds.split(","))
    print(common.load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
