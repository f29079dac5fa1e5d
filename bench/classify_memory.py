#!/usr/bin/env python
"""Classify memory: peak RSS of the in-memory path (float32 normalization against the previous float64
one), peak RSS of the streamed path on a codes file several times the budget, and the streamed
solver's accuracy against the in-memory one on real codes that fit.

* in-memory: a synthetic ``--rows`` x 1,280 codes file, one ``classify_codes`` run per side with a
  fixed C (no CV): svm with the previous solver ("liblinear": LinearSVC, which copies the codes to
  float64) against the current one ("after"), softmax with the previous PowerNormalizer ("before",
  float64 copies) against the current one.
* streamed: a synthetic ``--big-rows`` x 1,280 file (about 1 GiB), ``classify_codes`` with
  ``max_memory=--budget``; peak RSS, and the RSS of the interpreter with everything imported.
* accuracy: each CODES.h5[:LAYER] given, svm and softmax, in memory and streamed (a budget half the
  in-memory estimate, so the file would fit but is streamed).

Every run is a fresh child process (peak RSS is per process).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()


def _old_power_transform(self, X):  # the previous PowerNormalizer.transform, for the "before" side
    import numpy as np
    X = np.asarray(X, dtype=np.float64)
    X = np.sign(X) * np.abs(X) ** self.alpha
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def child_classify(codes: str, out: str, classifier: str, max_memory: str, side: str, layer: str = "") -> dict:
    from cnncodes.classify import models
    from cnncodes.classify.train import classify_codes

    if side == "before":
        models.PowerNormalizer.transform = _old_power_transform
    if side == "liblinear":  # the previous svm solver, LinearSVC (liblinear copies the codes to float64)
        from dataclasses import replace

        from sklearn.svm import LinearSVC
        models.CLASSIFIERS["svm"] = replace(
            models.CLASSIFIERS["svm"], warm_path=False, cv_max_rows=None, cv_params=None,
            build=lambda cw, seed: LinearSVC(class_weight=cw, dual=False, max_iter=10000, random_state=seed))
    base = common.peak_rss_mib()
    fixed = dict(C=10.0, cv=0) if side in ("before", "after", "liblinear") else {}
    t0 = time.perf_counter()
    rep = classify_codes(codes, out, layers=layer or None, classifier=classifier, progress=False,
                         max_memory=None if max_memory == "-" else max_memory, **fixed)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": common.peak_rss_mib(), "imported_rss_mib": base,
            "balanced_accuracy": rep["balanced_accuracy"], "hyperparameter": rep["hyperparameter"],
            "streamed": rep["notes"][0].startswith("streamed solver") if rep["notes"] else False,
            "note": rep["notes"][0] if rep["notes"] else ""}


def child_estimate(codes: str, layer: str) -> dict:
    from cnncodes.classify.stream import in_memory_bytes
    from cnncodes.classify.data import resolve_layers
    return {"bytes": in_memory_bytes(codes, resolve_layers(codes, layer or None))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", metavar="CODES.h5[:LAYER]", help="real codes for the accuracy comparison")
    ap.add_argument("--rows", type=int, default=20_000, help="rows of the in-memory synthetic file (default 20,000)")
    ap.add_argument("--big-rows", type=int, default=200_000, help="rows of the streamed synthetic file (~1 GiB)")
    ap.add_argument("--budget", default="256M", help="--max-memory of the streamed run (default 256M)")
    ap.add_argument("--skip", action="append", default=[], choices=("memory", "stream", "accuracy"))
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        from classify_speed import child_synthetic
        return common.serve_child(args.child, {
            "synthetic": lambda path, rows: child_synthetic(Path(path), int(rows), 1280, 10),
            "classify": child_classify, "estimate": child_estimate})
    print(f"classify memory; {common.load_average()}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-mem-") as tmp:
        tmp = Path(tmp)
        if "memory" not in args.skip:
            small = tmp / "small.h5"
            syn = common.run_child(SCRIPT, ["synthetic", str(small), str(args.rows)])
            print(f"in-memory path, synthetic {args.rows:,} x 1,280 file ({syn['bytes'] / 2**20:,.0f} MiB), C=10 fixed:")
            for clf, sides in (("svm", ("liblinear", "after")), ("softmax", ("before", "after"))):
                for side in sides:
                    r = common.run_child(SCRIPT, ["classify", str(small), str(tmp / f"{clf}{side}"), clf, "-", side])
                    print(f"  {clf:8s} {side:6s} peak RSS {r['peak_rss_mib']:,.0f} MiB (after imports "
                          f"{r['imported_rss_mib']:,.0f}), {r['seconds']:.1f} s, balanced accuracy "
                          f"{r['balanced_accuracy']:.4f}")
            small.unlink()
        if "stream" not in args.skip:
            big = tmp / "big.h5"
            syn = common.run_child(SCRIPT, ["synthetic", str(big), str(args.big_rows)])
            print(f"streamed path, synthetic {args.big_rows:,} x 1,280 file ({syn['bytes'] / 2**20:,.0f} MiB), "
                  f"--max-memory {args.budget}:")
            r = common.run_child(SCRIPT, ["classify", str(big), str(tmp / "big"), "svm", args.budget, "stream"],
                                 timeout=24 * 3600)
            print(f"  svm streamed={r['streamed']} peak RSS {r['peak_rss_mib']:,.0f} MiB (after imports "
                  f"{r['imported_rss_mib']:,.0f}), {r['seconds']:.1f} s, balanced accuracy "
                  f"{r['balanced_accuracy']:.4f}, {r['hyperparameter']}\n  note: {r['note']}")
        if "accuracy" not in args.skip:
            for n, item in enumerate(args.files):
                codes, _, layer = item.partition(":")
                budget = str(common.run_child(SCRIPT, ["estimate", codes, layer])["bytes"] // 2)
                for clf in ("svm", "softmax"):
                    res = {how: common.run_child(SCRIPT, ["classify", codes, str(tmp / f"a{n}{clf}{how}"), clf,
                                                          mm, how, layer]) for how, mm in (("memory", "-"), ("stream", budget))}
                    m, s = res["memory"], res["stream"]
                    print(f"  {Path(codes).name}:{layer or '(first)'} {clf:8s} in memory {m['balanced_accuracy']:.4f} "
                          f"({m['hyperparameter']}, {m['seconds']:.1f} s) | streamed={s['streamed']} "
                          f"{s['balanced_accuracy']:.4f} ({s['hyperparameter']}, {s['seconds']:.1f} s) | "
                          f"difference {100 * (s['balanced_accuracy'] - m['balanced_accuracy']):+.1f} points")
                    print(f"    {s['note'][:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
