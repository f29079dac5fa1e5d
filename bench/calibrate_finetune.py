"""Fine-tuning at freeze 0.33 / 0.7 / 1 / 0 on the six calibration sets, and the advisor's threshold fitted to it.

Each run is ``cnncodes finetune SET --out DIR --freeze F --epochs E --quiet`` in a fresh process, every other
option at finetune's default; E is what advise recommends (``advise.commands.finetune_epochs``: finetune.budget's
step rule, no time cap: >= 300 SGD steps or 6 epochs on the images left for training after the validation
carve). A result is appended to a JSON-lines file as soon as its run ends and runs already there are skipped,
so the script resumes.
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
BATCH = 32  # finetune's default batch size
# The advisor's similarity and the codes side on the same evaluation splits, from bench/RESULTS.md "The advisor's
# evidence on six real sets, out of sample" (2026-12-04): `advise_images(SET, sample=500)` and `cnncodes run SET
# --layer penultimate --layer BLOCK --layer penultimate+BLOCK --classifiers svm,softmax`. "codes" is the best of
# those 12 rows on the evaluation split (the strictest bar for fine-tuning), "pick" the row `run` chose by CV.
EVIDENCE = {
    "hymenoptera": {"similarity": 0.745, "codes": 0.962, "codes_row": "softmax penultimate", "pick": 0.960},
    "clothing6": {"similarity": 0.539, "codes": 0.896, "codes_row": "svm penultimate", "pick": 0.896},
    "rsscn7_aerial": {"similarity": 0.329, "codes": 0.872, "codes_row": "svm block5", "pick": 0.856},
    "sign_digits": {"similarity": 0.325, "codes": 0.956, "codes_row": "softmax penultimate+block5", "pick": 0.953},
    "potato_leaf_imbalanced": {"similarity": 0.373, "codes": 0.969, "codes_row": "softmax block4", "pick": 0.969},
    "digits": {"similarity": 0.219, "codes": 0.989, "codes_row": "svm penultimate+block5", "pick": 0.987},
}
def set_root(name: str) -> Path:
    """The image folder of calibration set ``name``; digits is written once by `cnncodes dataset digits`."""
    if name != "digits":
        return DATASETS / name
    root = CACHE / "digits-dataset"
    if not (root / "train").is_dir():
        subprocess.run([sys.executable, str(REPO / "pipeline.py"), "dataset", "digits", str(root)], check=True)
    return root


def run_one(name: str, root: Path, freeze: float) -> dict:
    """One fine-tune as a fresh process; its figures as a JSON-able row."""
    from cnncodes.advise.commands import finetune_epochs
    from cnncodes.extract.reader import list_images

    epochs = finetune_epochs(list_images(root))  # the epochs advise's recommended fine-tune names
    out = CACHE / "calibrate_finetune" / f"{name}-freeze{freeze:g}"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "pipeline.py"), "finetune", str(root), "--out", str(out),
                    "--freeze", str(freeze), "--epochs", str(epochs), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    ft = report["finetune"]
    n_train = report["n_train"]
    return {"set": name, "freeze": freeze, "epochs": epochs, "n_train": n_train,
            "steps": epochs * math.ceil(n_train / BATCH), "best_epoch": ft["best_epoch"],
            "val_balanced_accuracy": report["balanced_accuracy"], "n_eval": report["n_test"],
            "eval_class_counts": list(report["test_class_counts"].values()),
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


def balanced_accuracy_se(score: float, class_counts: list[int]) -> float:
    """Standard error of a balanced accuracy: each class's recall a binomial on its images, every recall set to
    ``score`` (the codes rows kept no per-class figures)."""
    k = len(class_counts)
    return math.sqrt(score * (1 - score) * sum(1 / n for n in class_counts)) / k


def winner(name: str, rows: list[dict]) -> dict:
    """Fine-tune wins a set when its best freeze beats the best codes row by more than one standard error of the
    difference (the two taken as independent), else codes (cheaper) win."""
    best = max(rows, key=lambda r: r["val_balanced_accuracy"])
    counts = best["eval_class_counts"]
    codes = EVIDENCE[name]["codes"]
    diff = best["val_balanced_accuracy"] - codes
    se = math.hypot(balanced_accuracy_se(best["val_balanced_accuracy"], counts), balanced_accuracy_se(codes, counts))
    return {"kind": "finetune" if diff > se else "codes", "diff": diff, "se": se, "best_freeze": best["freeze"],
            "by_one_point": "finetune" if diff > 0.01 else "codes"}


def fit_threshold(points: list[tuple[float, str]], prior: float) -> float:
    """The similarity threshold (codes from it on, fine-tune below) that gets the most of ``points`` (similarity,
    winner) right; among equals the midpoint of the widest gap between neighbouring similarities; ``prior``
    when the points hold one kind of winner only (nothing to separate)."""
    if len({kind for _, kind in points}) < 2:
        return prior
    sims = sorted(s for s, _ in points)
    candidates = [((a + b) / 2, b - a) for a, b in zip(sims, sims[1:])] + [(sims[0] - 0.01, 0.0),
                                                                         (sims[-1] + 0.01, 0.0)]

    def errors(t: float) -> int:
        return sum((s >= t) != (kind == "codes") for s, kind in points)

    return min(candidates, key=lambda c: (errors(c[0]), -c[1]))[0]


def leave_one_out(points: dict[str, tuple[float, str]], prior: float) -> dict[str, float]:
    """Per set, the threshold fitted on the other sets' (similarity, winner) points."""
    return {name: fit_threshold([p for other, p in points.items() if other != name], prior) for name in points}


def says(similarity: float, threshold: float) -> str:
    """The advisor's kind for a small set: codes from ``threshold`` on (scenario 1), fine-tune below (scenario 3)."""
    return "codes" if similarity >= threshold else "finetune"


def fit(results: list[dict]) -> None:
    """Print the sweep table, the winners, the leave-one-set-out threshold fit and the freeze summary."""
    from cnncodes.advise.scenario import SIMILAR_FROM

    done = {name: [r for r in results if r["set"] == name] for name in SETS}
    done = {name: rows for name, rows in done.items() if rows}
    wins = {name: winner(name, rows) for name, rows in done.items()}
    points = {name: (EVIDENCE[name]["similarity"], w["kind"]) for name, w in wins.items()}
    loo = leave_one_out(points, SIMILAR_FROM)
    print("\n| set | similarity | codes best (row) | " + " | ".join(f"finetune --freeze {f:g}" for f in FREEZES)
          + f" | winner (fine-tune - codes ± SE) | scenario at {SIMILAR_FROM} | threshold without it: scenario "
          "| agrees? |")
    print("|---|---:|---|" + "---|" * len(FREEZES) + "---|---|---|---|")
    for name, rows in done.items():
        ev, w = EVIDENCE[name], wins[name]
        cells = []
        for f in FREEZES:
            r = next((r for r in rows if r["freeze"] == f), None)
            cells.append("not run" if r is None else f"{r['val_balanced_accuracy']:.3f} (epoch {r['best_epoch']}/"
                         f"{r['epochs']}, {r['steps']} steps, {r['wall_s']:.0f} s)")
        kind = says(ev["similarity"], loo[name])
        print(f"| {name} | {ev['similarity']:.3f} | {ev['codes']:.3f} ({ev['codes_row']}) | {' | '.join(cells)} | "
              f"**{w['kind']}** ({w['diff']:+.3f} ± {w['se']:.3f}; by 1 point: {w['by_one_point']}) | "
              f"{1 if ev['similarity'] >= SIMILAR_FROM else 3} | {loo[name]:.3f}: {1 if kind == 'codes' else 3} | "
              f"{'yes' if kind == w['kind'] else 'no'} |")
    for rule, key in (("winner by one standard error", "kind"), ("winner by 1 point", "by_one_point")):
        pts = {name: (EVIDENCE[name]["similarity"], w[key]) for name, w in wins.items()}
        held = leave_one_out(pts, SIMILAR_FROM)
        agree = sum(says(sim, held[name]) == kind for name, (sim, kind) in pts.items())
        print(f"{rule}: leave-one-set-out, the scenario agrees on {agree} of {len(pts)} sets; fitted on all "
              f"{len(pts)}: SIMILAR_FROM = {fit_threshold(list(pts.values()), SIMILAR_FROM):.3f} (now {SIMILAR_FROM})")
    tuned = [name for name, w in wins.items() if w["kind"] == "finetune"]
    for f in FREEZES:
        scores = [r["val_balanced_accuracy"] for name in tuned for r in done[name] if r["freeze"] == f]
        best_on = [n for n, w in wins.items() if w["best_freeze"] == f]
        mean = f"{sum(scores) / len(scores):.3f}" if scores else "-"
        print(f"freeze {f:g}: mean {mean} over the {len(scores)} sets fine-tuning won (where run); the best freeze "
              f"on {', '.join(best_on) or 'none'}")


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
    fit(load_results(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
