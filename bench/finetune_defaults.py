"""Which of finetune's defaults cost points on small real sets: one ablation at a time, side by side.

Variants (each a fresh child process running ``finetune_images`` with the freeze default, 1/3):
  a  the 2026-12-04 defaults: 6 epochs, a stratified 15% of train carved to choose the epoch, 1 warm-up epoch
  b  a with step-sized epochs (finetune.budget.step_sized_epochs: >= 300 SGD steps, >= 6 epochs)
  c  b on all training images: no carve (--val-fraction 0), the last epoch kept
  d  c without the warm-up epoch
  e  c with RandomResizedCrop's ImageNet scale (0.08, 1) instead of finetune's (0.25, 1)
Prints balanced accuracy on each set's val/ split (reported, nothing chosen by it), with the training-side
figures (steps, last training loss, the epoch the carve chose), the CPU flags and the load average. Rows
go to --log as JSON lines as they finish, so a run can be continued and the table printed from it.

    python bench/finetune_defaults.py --datasets ../shared/datasets    # a-e on rsscn7_aerial and clothing6
    python bench/finetune_defaults.py --runs rsscn7_aerial:c:1,clothing6:c:1 --log same.jsonl
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, BENCH)
import common  # noqa: E402

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(BENCH)]  # finetune = the package

SCRIPT = Path(__file__).resolve()
DATASETS = common.REPO.parent / "shared" / "datasets"
OLD = {"epochs": 6, "val_fraction": 0.15, "warmup_epochs": 1.0}
VARIANTS = {
    "a": ("defaults of 2026-12-04 (6 epochs, 15% carve, warm-up 1)", OLD, None),
    "b": ("a + step-sized epochs", {**OLD, "epochs": None}, None),
    "c": ("b + no carve (all train images, last epoch)", {**OLD, "epochs": None, "val_fraction": 0.0}, None),
    "d": ("c + no warm-up", {"epochs": None, "val_fraction": 0.0, "warmup_epochs": 0.0}, None),
    "e": ("c + crop scale (0.08, 1)", {**OLD, "epochs": None, "val_fraction": 0.0}, (0.08, 1.0)),
}
DEFAULT_RUNS = [f"{s}:{v}:0" for v in "acbde" for s in ("rsscn7_aerial", "clothing6")]


def child_finetune(images: str, out: str, variant: str, seed: str) -> dict:
    from cnncodes import pipeline
    pipeline.process_settings()
    import cnncodes.finetune.data
    from cnncodes import finetune
    from cnncodes.finetune import finetune_images

    _, options, scale = VARIANTS[variant]
    if scale:
        finetune.data.CROP_SCALE = scale  # read when the training dataset is built
    start = time.perf_counter()
    report = finetune_images(images, out, **options, seed=int(seed), progress=False, overwrite=True)
    ft, history = report["finetune"], report["finetune"]["history"]
    return {"balanced_accuracy": report["balanced_accuracy"], "val": report["val_balanced_accuracy"],
            "n_train": report["n_train"], "n_val": ft["n_val"], "n_test": report["n_test"],
            "epochs": len(history), "steps": sum(-(-r["images"] // 32) for r in history),
            "best_epoch": ft["best_epoch"],
            "last_loss": history[-1]["train_loss"], "seconds": time.perf_counter() - start,
            "img_s": sum(r["images"] for r in history) / sum(r["train_seconds"] for r in history)}


def print_table(rows: list[dict]) -> None:
    print("| set | variant | seed | val/ balanced accuracy | wrong of val/ | train / carve | epochs (steps) | "
          "chosen epoch (carve score) | last train loss | wall s | img/s |")
    print("|---|---|---:|---:|---:|---|---|---|---:|---:|---:|")
    for r in rows:
        wrong = round((1 - r["balanced_accuracy"]) * r["n_test"])
        chosen = "last" if r["n_val"] == 0 else f"{r['best_epoch']} ({r['val']:.3f})"
        print(f"| {r['set']} | {r['variant']}: {VARIANTS[r['variant']][0]} | {r['seed']} "
              f"| {r['balanced_accuracy']:.3f} "
              f"| ~{wrong} of {r['n_test']} | {r['n_train']} / {r['n_val']} | {r['epochs']} ({r['steps']}) | {chosen} "
              f"| {r['last_loss']:.3f} | {r['seconds']:.0f} | {r['img_s']:.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="SET:VARIANT:SEED,... (default: %(default)s)")
    parser.add_argument("--log", default=str(common.CACHE / "finetune_defaults.jsonl"),
                        help="JSON lines of finished rows; rows already there are not run again")
    parser.add_argument("--datasets", default=str(DATASETS), help="folder of the sets (default: %(default)s)")
    parser.add_argument("--table-only", action="store_true", help="print the table of --log and stop")
    args = parser.parse_args()
    if args.child:
        return common.serve_child(args.child, {"finetune": child_finetune})
    log = Path(args.log)
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not args.table_only:
        print(f"# {common.cpu_line()}; {common.load_average()} at start", flush=True)
        for run in args.runs.split(","):
            name, variant, seed = run.split(":")
            if any((r["set"], r["variant"], str(r["seed"])) == (name, variant, seed) for r in done):
                continue
            out = common.CACHE / "finetune-defaults" / f"{name}-{variant}-{seed}"
            result = common.run_child(SCRIPT, ["finetune", str(Path(args.datasets) / name), str(out), variant, seed],
                                      timeout=3 * 3600)
            shutil.rmtree(out, ignore_errors=True)
            row = {"set": name, "variant": variant, "seed": int(seed), **result, "load": common.load_average()}
            done.append(row)
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"# {name} {variant} seed {seed}: {result['balanced_accuracy']:.3f} in {result['seconds']:.0f} s; "
                  f"{row['load']}", flush=True)
        print(f"# {common.load_average()} at the end")
    print_table(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
