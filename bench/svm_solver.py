#!/usr/bin/env python
"""Linear SVM solver: cross-validation over C with the previous solver against the current one.

Both sides run ``classify.train.classify_codes`` (5-fold CV over the C grid, the final fit, the reports)
on the same codes, alternating, in one process: "before" swaps in the previous ``CLASSIFIERS["svm"]``
(LinearSVC ``dual=False``, liblinear's primal solver, each CV fit from scratch through GridSearchCV),
"after" is the code as it stands. ``--noisy-copies SRC.h5:LAYER`` first writes a ``--rows`` file of
noisy copies of a real file's codes (each copy x + 0.5 x the feature's std x N(0, 1), clipped at 0;
labels kept) and benchmarks it too: a realistic 20,000 x 1,280 set. The 80/20 split is drawn per source
image, so every copy of one image sits on the same side: no test row has a training twin. Usage::

    python bench/svm_solver.py CODES.h5[:LAYER] ... [--noisy-copies SRC.h5:LAYER --rows 20000] [--rounds 2]
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

from cnncodes.classify import models  # noqa: E402
from cnncodes.classify.train import classify_codes  # noqa: E402

BEFORE = replace(models.CLASSIFIERS["svm"], warm_path=False, cv_max_rows=None, cv_params=None,
                 build=lambda cw, seed: LinearSVC(class_weight=cw, dual=False, max_iter=10000, random_state=seed))


def noisy_copies(source: str, layer: str, rows: int, out: Path) -> str:
    """Write ``rows`` noisy copies of the codes of ``layer`` in ``source`` to ``out``; returns "out:layer"."""
    import h5py
    import numpy as np

    from cnncodes.extract.codesfile import Rows, create_codes_dataset, read_meta, read_rows, write_attrs, write_rows

    with h5py.File(source, "r") as h5:
        meta, src_rows, X = read_meta(h5), read_rows(h5), h5["codes"][layer][:]
    keep = src_rows.ok.astype(bool) & (src_rows.labels >= 0)
    X, labels, paths = X[keep], src_rows.labels[keep], src_rows.paths[keep]
    rng = np.random.default_rng(0)
    pick = np.arange(rows) % len(X)
    source_split = np.where(rng.random(len(X)) < 0.8, "train", "test")  # by source image: twins stay together
    noise = 0.5 * X.std(axis=0)
    with h5py.File(out, "w") as h5:
        write_attrs(h5, {**meta, "complete": False})
        write_rows(h5, Rows(labels=labels[pick], paths=np.array([f"{p}#{i}" for i, p in enumerate(paths[pick])],
                                                                 dtype=object),
                            split=source_split[pick].astype(object),
                            ok=np.ones(rows, bool), errors=np.array([""] * rows, dtype=object),
                            file_size=np.full(rows, 1000, np.int64), file_mtime_ns=np.zeros(rows, np.int64)))
        ds = create_codes_dataset(h5, layer, rows, X.shape[1], "float32")
        for s in range(0, rows, 4096):
            x = X[pick[s:s + 4096]]
            ds[s:s + len(x)] = np.maximum(0, x + noise * rng.standard_normal(x.shape, dtype=np.float32))
        h5.attrs["complete"] = True
    return f"{out}:{layer}"


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
    ap.add_argument("files", nargs="*", metavar="CODES.h5[:LAYER]")
    ap.add_argument("--rounds", type=int, default=2, help="alternating before/after rounds (default: 2)")
    ap.add_argument("--noisy-copies", metavar="SRC.h5:LAYER", help="also benchmark noisy copies of these codes")
    ap.add_argument("--rows", type=int, default=20_000, help="rows of the --noisy-copies file (default 20,000)")
    args = ap.parse_args(argv)
    print(f"svm solver; {common.cpu_line()}; {common.load_average()}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-svm-") as tmp:
        files = list(args.files)
        if args.noisy_copies:
            source, _, layer = args.noisy_copies.partition(":")
            files.append(noisy_copies(source, layer, args.rows, Path(tmp) / "noisy.h5"))
        for n, item in enumerate(files):
            codes, _, layer = item.partition(":")
            results = {"before": [], "after": []}
            for r in range(args.rounds):
                for side, spec in (("before", BEFORE), ("after", models.CLASSIFIERS["svm"])):
                    results[side].append(run(codes, layer or None, Path(tmp) / f"{side}{n}-{r}", spec))
            for side, runs in results.items():
                first = runs[0]
                times = " ".join(f"{x['seconds']:.1f}" for x in runs)
                print(f"  {Path(codes).name}:{'+'.join(first['layers'])} ({first['n_train']} train rows) {side:6s} "
                      f"{times} s  C={first['C']:g}  CV {first['cv_score']:.4f}  "
                      f"test balanced accuracy {first['balanced_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
