"""Fine-tuning at freeze 0.33 / 0.7 / 1 / 0 on the six calibration sets, and the advisor's threshold fitted to it.

Each run is ``cnncodes finetune SET --out DIR --freeze F --epochs E --quiet`` in a fresh process, every other
option at finetune's default; E comes from ``finetune.budget.epochs_for`` with no time cap (>= 300 SGD
steps or 6 epochs on the images left for training after the validation carve). A result is appended
to a JSON-lines file as soon as its run ends and runs already there are skipped, so the script resumes.
It prints the sweep table and the leave-one-set-out fit of the advisor's similarity threshold.

    nohup python bench/calibrate_finetune.py &             # the sweep (hours on a busy CPU), then the fit
    CNNCODES_DATASETS=/path/to/shared/datasets ...         # where ../shared/datasets is not beside the checkout
    python bench/calibrate_finetune.py --fit-only          # the tables from the results so far
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

SETS = ("clothing6", "sign_digits", "digits", "rsscn7_aerial", "potato_leaf_imbalanced", "hymenoptera")
FREEZES = (0.33, 0.7, 1.0, 0.0)  # the cheapest informative first
DATASETS = Path(os.environ.get("CNNCODES_DATASETS", REPO.parent / "shared" / "datasets"))
CACHE = Path(os.environ.get("CNNCODES_BENCH_CACHE", Path(os.environ.get("TMPDIR", "/tmp")) / "cnncodes-bench"))
RESULTS = BENCH / "calibrate_finetune.jsonl"
NO_TIME_CAP = 1e12  # seconds: epochs_for's budget, so that only its step rule decides
BATCH = 32  # finetune's default batch size


def set_root(name: str) -> Path:
    """The image folder of calibration set ``name``; digits is written once by `cnncodes dataset digits`."""
    if name != "digits":
        return DATASETS / name
    root = CACHE / "digits-dataset"
    if not (root / "train").is_dir():
        subprocess.run([sys.executable, str(REPO / "pipeline.py"), "dataset", "digits", str(root)], check=True)
    return root


def training_images(root: Path) -> int:
    """Images finetune trains on at its defaults: the train split less the stratified validation carve."""
    from extract.reader import list_images
    from finetune.data import choose_splits
    from finetune.options import FinetuneConfig

    listing = list_images(root)
    splits = choose_splits(listing, listing.labels >= 0, FinetuneConfig.val_fraction, FinetuneConfig.seed)
    return len(splits.train)


def run_one(name: str, root: Path, freeze: float) -> dict:
    """One fine-tune as a fresh process; its figures as a JSON-able row."""
    from finetune.budget import epochs_for

    n_train = training_images(root)
    epochs = epochs_for(n_train, BATCH, NO_TIME_CAP, 1.0)
    out = CACHE / "calibrate_finetune" / f"{name}-freeze{freeze:g}"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "pipeline.py"), "finetune", str(root), "--out", str(out),
                    "--freeze", str(freeze), "--epochs", str(epochs), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    ft = report["finetune"]
    return {"set": name, "freeze": freeze, "epochs": epochs, "n_train": n_train,
            "steps": epochs * math.ceil(n_train / BATCH), "best_epoch": ft["best_epoch"],
            "val_balanced_accuracy": report["balanced_accuracy"], "n_eval": report["n_test"],
            "carve_score": report["val_balanced_accuracy"], "train_s": round(report["fit_time_s"], 1),
            "wall_s": round(wall, 1), "load_avg_1m": round(load, 2), "out": str(out)}


def load_results(path: Path) -> list[dict]:
    """Rows of the JSON-lines results file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sweep(path: Path, sets: tuple[str, ...], freezes: tuple[float, ...]) -> None:
    """Run every (freeze, set) not yet in ``path``, freeze by freeze, appending each result as it ends."""
    done = {(r["set"], r["freeze"]) for r in load_results(path)}
    for freeze in freezes:
        for name in sets:
            if (name, freeze) in done:
                continue
            row = run_one(name, set_root(name), freeze)
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} freeze {freeze:g}: {row['val_balanced_accuracy']:.3f} (epoch {row['best_epoch']}/"
                  f"{row['epochs']}, {row['steps']} steps, {row['wall_s']:.0f} s, load {row['load_avg_1m']})",
                  flush=True)


def cpu_flags() -> str:
    """The CPU model and its vector flags that matter for torch's kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    return f"{model}; {' '.join(wanted)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines file of finished runs")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--freezes", default=",".join(f"{f:g}" for f in FREEZES))
    parser.add_argument("--fit-only", action="store_true", help="no new runs: the tables from the results so far")
    args = parser.parse_args()
    print(cpu_flags(), flush=True)
    if not args.fit_only:
        sweep(args.results, tuple(args.sets.split(",")), tuple(float(f) for f in args.freezes.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
