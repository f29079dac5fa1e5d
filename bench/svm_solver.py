#!/usr/bin/env python
"""Linear SVM solver settings: cross-validation over C with the previous settings against the current ones.

Both sides run ``classify.train.classify_codes`` (5-fold CV over the C grid, the final fit, the reports)
on the same codes, alternating, in one process: "before" swaps in the previous ``CLASSIFIERS["svm"]``
(LinearSVC ``dual="auto"``, which picks liblinear's dual solver when there are fewer rows than
features), "after" is the code as it stands. Usage::

    python bench/svm_solver.py CODES.h5[:LAYER] [CODES.h5[:LAYER] ...] [--rounds 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

from sklearn.svm import LinearSVC  # noqa: E402

from classify import models  # noqa: E402
from classify.train import classify_codes  # noqa: E402

BEFORE = replace(models.CLASSIFIERS["svm"], build=lambda cw, seed: LinearSVC(
    class_weight=cw, dual="auto", max_iter=10000, random_state=seed))


def run(codes: str, layer: str | None, out: Path, spec) -> dict:
    saved = models.CLASSIFIERS["svm"]
    models.CLASSIFIERS["svm"] = spec
    try:
        t0 = time.perf_counter()
        rep = classify_codes(codes, out, layers=layer, classifier="svm", progress=False)
        return {"seconds": time.perf_counter() - t0, **{k: rep[k] for k in ("balanced_accuracy", "cv_score", "C",
                                                                             "n_train", "layers")}}
    finally:
        models.CLASSIFIERS["svm"] = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", metavar="CODES.h5[:LAYER]")
    ap.add_argument("--rounds", type=int, default=2, help="alternating before/after rounds (default: 2)")
    args = ap.parse_args(argv)
    print(f"svm solver settings; {common.load_average()}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-svm-") as tmp:
        for item in args.files:
            codes, _, layer = item.partition(":")
            results = {"before": [], "after": []}
            for r in range(args.rounds):
                for side, spec in (("before", BEFORE), ("after", models.CLASSIFIERS["svm"])):
                    results[side].append(run(codes, layer or None, Path(tmp) / f"{side}{r}", spec))
            for side, runs in results.items():
                first = runs[0]
                times = " ".join(f"{x['seconds']:.1f}" for x in runs)
                print(f"  {Path(codes).name}:{'+'.join(first['layers'])} ({first['n_train']} train rows) {side:6s} "
                      f"{times} s  C={first['C']:g}  CV {first['cv_score']:.4f}  "
                      f"test balanced accuracy {first['balanced_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
