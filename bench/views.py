#!/usr/bin/env python
"""Multi-view codes (``extract --views 1|2|10``): extraction time and held-out balanced accuracy.

For each image set (``root/{train,val}/CLASS/*``), each number of views is extracted in a fresh child
process (default backbone and weights, ``--precision auto``), then ``cnncodes compare`` runs svm and
softmax on the codes file (C by cross-validation on train; val is the evaluation split, never used to
choose). A first untimed extraction fills the converted-model cache, as a user's second run finds it.
Usage::

    python bench/views.py [--sets hymenoptera,clothing6,rsscn7_aerial] [--views 1,2,10]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)

DATASETS = Path(os.environ.get("CNNCODES_BENCH_DATASETS", common.HYMENOPTERA.parent))


def child_extract(root: str, out: str, views: str) -> dict:
    """Extract ``root`` with ``views`` views into ``out``: seconds (extract_codes' own clock) and the runtime."""
    from cnncodes import pipeline
    pipeline.process_settings()
    from cnncodes.extract import extract_codes

    result = extract_codes(root, out, views=int(views), progress=False)
    return {"seconds": result.seconds, "images": result.n_extracted, "runtime": result.runtime,
            "failed": len(result.failures)}


def compare_views(codes: Path, out: Path) -> dict[str, float]:
    """Held-out (val) balanced accuracy of svm and softmax on ``codes``."""
    from cnncodes.classify import compare

    rows = compare(codes, out, classifiers=["svm", "softmax"], progress=False, overwrite=True)
    return {r["classifier"]: r["balanced_accuracy"] for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="hymenoptera,clothing6,rsscn7_aerial")
    parser.add_argument("--views", default="1,2,10")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        return common.serve_child(args.child, {"extract": child_extract})
    print(f"cpu: {common.cpu_line()}; {common.load_average()}")
    script = Path(__file__).resolve()
    print("| set | views | images | extract s | img/s | svm bal. acc. (val) | softmax bal. acc. (val) | runtime |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="cnncodes-views-") as tmp:
        first = DATASETS / args.sets.split(",")[0] / "val"
        common.run_child(script, ["extract", str(first), str(Path(tmp) / "warm.h5"), "1"])  # fills the cache
        for name in args.sets.split(","):
            for views in args.views.split(","):
                codes = Path(tmp) / f"{name}-{views}.h5"
                run = common.run_child(script, ["extract", str(DATASETS / name), str(codes), views])
                scores = compare_views(codes, Path(tmp) / f"{name}-{views}")
                print(f"| {name} | {views} | {run['images']} | {run['seconds']:.1f} | "
                      f"{run['images'] / run['seconds']:.1f} | {scores['svm']:.3f} | {scores['softmax']:.3f} | "
                      f"{run['runtime']} |", flush=True)
    print(common.load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
