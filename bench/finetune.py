"""Codes + linear classifier vs fine-tuning at several freeze fractions, on real image sets.

For each set: `extract` + `classify` (linear SVM, C by CV: what `cnncodes run` does) against
`finetune` with its defaults at each ``--freezes`` value, and one LP-FT run (head alone for
``--lp-epochs`` epochs, then the rest of the same epoch budget fine-tuning). Prints balanced
accuracy on the evaluation split, the validation score that chose the epoch, and wall time, with
the CPU model and flags. Every run is a fresh child process (see common.py).

    python bench/finetune.py                      # hymenoptera and digits, the defaults
    python bench/finetune.py --sets hymenoptera --freezes 1,0.3
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, BENCH)
import common  # noqa: E402

# This script's own name would shadow the finetune package: import that from the repository instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(BENCH)]

SCRIPT = Path(__file__).resolve()


def child_codes(images: str, out: str) -> dict:
    from cnncodes import pipeline
    pipeline.process_settings()  # what the command line sets before torch loads
    from cnncodes.classify import classify_codes
    from cnncodes.extract import extract_codes

    Path(out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    extract_codes(images, Path(out) / "codes.h5", progress=False)
    report = classify_codes(Path(out) / "codes.h5", Path(out) / "classify", classifier="svm", progress=False)
    return {"balanced_accuracy": report["balanced_accuracy"], "val": report["cv_score"],
            "seconds": time.perf_counter() - start, "n_train": report["n_train"], "n_test": report["n_test"],
            "split_source": report["split_source"]}


def child_finetune(images: str, out: str, freeze: str, epochs: str, lp_epochs: str) -> dict:
    from cnncodes import pipeline
    pipeline.process_settings()  # sleeping OpenMP threads: spinning ones made training 3-10x slower here
    from cnncodes.finetune import finetune_images

    start = time.perf_counter()
    report = finetune_images(images, out, freeze=float(freeze), epochs=int(epochs), lp_epochs=int(lp_epochs),
                             progress=False, overwrite=True)
    ft = report["finetune"]
    return {"balanced_accuracy": report["balanced_accuracy"], "val": report["val_balanced_accuracy"],
            "seconds": time.perf_counter() - start, "n_train": report["n_train"], "n_test": report["n_test"],
            "n_val": ft["n_val"], "best_epoch": ft["best_epoch"], "frozen": len(ft["frozen_units"]),
            "units": len(ft["frozen_units"]) + len(ft["trained_units"]),
            "img_s": sum(r["images"] for r in ft["history"]) / sum(r["train_seconds"] for r in ft["history"])}


def image_sets(names: list[str], digits_per_class: int | None) -> dict[str, Path]:
    sets = {}
    if "hymenoptera" in names:
        if not common.HYMENOPTERA.is_dir():
            raise SystemExit(f"{common.HYMENOPTERA} is missing")
        sets["hymenoptera"] = common.HYMENOPTERA
    if "digits" in names:
        from cnncodes.extract.datasets import write_digits

        root = common.CACHE / f"digits-{digits_per_class or 'all'}"
        if not root.is_dir():
            write_digits(root, per_class=digits_per_class)
        sets["digits"] = root
    return sets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--sets", default="hymenoptera,digits", help="comma-separated: hymenoptera, digits")
    parser.add_argument("--freezes", default="1,0.7,0.3,0", help="freeze fractions to fine-tune with")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs (the finetune default: 6)")
    parser.add_argument("--lp-epochs", type=int, default=2, help="LP-FT run: head-only epochs out of --epochs "
                        "(0: no LP-FT run)")
    parser.add_argument("--lp-freeze", type=float, default=0.3, help="freeze fraction of the LP-FT run")
    parser.add_argument("--digits-per-class", type=int, default=None, help="cap digits images per class")
    args = parser.parse_args()
    if args.child:
        return common.serve_child(args.child, {"codes": child_codes, "finetune": child_finetune})
    print(f"# {common.cpu_line()}; {common.load_average()} at start", flush=True)
    work = common.CACHE / "finetune-runs"
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, images in image_sets(args.sets.split(","), args.digits_per_class).items():
        runs = [("codes + linear SVM (run)", ["codes", str(images), str(work / name / "codes")])]
        for f in args.freezes.split(","):
            runs.append((f"finetune --freeze {f}", ["finetune", str(images), str(work / name / f"ft-{f}"), f,
                                                    str(args.epochs), "0"]))
        if args.lp_epochs:
            runs.append((f"finetune --freeze {args.lp_freeze:g} --lp-epochs {args.lp_epochs} --epochs "
                         f"{args.epochs - args.lp_epochs}",
                         ["finetune", str(images), str(work / name / "lpft"), str(args.lp_freeze),
                          str(args.epochs - args.lp_epochs), str(args.lp_epochs)]))
        for label, child in runs:
            result = common.run_child(SCRIPT, child, timeout=3 * 3600)
            rows.append((name, label, result))
            _print_row(name, label, result)
    print(f"# {common.load_average()} at the end")
    return 0


def _print_row(name: str, label: str, r: dict) -> None:
    val = "-" if r.get("val") is None else f"{r['val']:.3f}"
    extra = (f"frozen {r['frozen']}/{r['units']} blocks, best epoch {r['best_epoch']}, {r['img_s']:.1f} img/s, "
             f"{r['n_val']} validation images" if "frozen" in r else r.get("split_source", ""))
    print(f"| {name} | {label} | {r['balanced_accuracy']:.3f} | {val} | {r['seconds']:.0f} s | "
          f"{r['n_train']} / {r['n_test']} | {extra} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
