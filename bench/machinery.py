#!/usr/bin/env python
"""Does extract's machinery still pay? The shared-memory batch slots and the early decoders, each switched off
in turn, and `gc.freeze` (removed: its figures did not pay) put back, against the code as it is, in whole fresh
`cnncodes extract` processes.

Every run is a fresh child that patches the runner before ``pipeline.main`` and runs
`cnncodes extract ROOT -o OUT --overwrite --quiet` (MobileNetV2 penultimate, defaults otherwise):

* base: the code as it is;
* freeze: ``gc.freeze()`` around ``extract_codes`` (as extract did until issue 23, item 5);
* noslots: ``batches.Slots`` makes none, so the forked decoders return their batches pickled;
* noearly: ``runner.fresh`` is False, so the decoders start only after the network is built.

Each for ``--precision auto`` with this CPU's capabilities (bf16 where native) and with fp32 forced
(``CNNCODES_CPU_CAPABILITIES=FP32,INT8``: an AVX2-only CPU's default, on this CPU's kernels), on hymenoptera
x1 and x5 (symlinks). The converted models are cached by untimed runs first. Rounds rotate the variant order.
Per run: seconds inside ``extract_codes``, the whole child process (parent's clock), CPU seconds of the
process tree (rusage of the reaped children: the child and its decoders), and the main process's garbage
collections. It prints the median per-round ratio variant / base of each, with the round-to-round spread.
``--log FILE`` appends every run as a JSON line; ``--report FILE`` prints the summary of such a log, so the
rounds can be split over several commands (``--first-round`` keeps the rotation going; ``--from-round``
leaves a disturbed start out of the report).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
VARIANTS = ("base", "freeze", "noslots", "noearly")
PRECISIONS = {"native": None, "fp32": "FP32,INT8"}  # name: $CNNCODES_CPU_CAPABILITIES (None: this CPU's)
CACHE_DIR = common.CACHE / "machinery-openvino"


# ============================================================================ child (a fresh process)
def child(variant: str, root: str, out: str) -> None:
    """Patch the runner for ``variant``, run `cnncodes extract` in this process, print its timings as JSON."""
    import gc

    from cnncodes import pipeline
    from cnncodes import extract
    from cnncodes.extract import batches, runner

    if variant == "noslots":
        batches.Slots = lambda *a, **k: None
    elif variant == "noearly":
        runner.fresh = lambda *a, **k: False
    elif variant not in ("base", "freeze"):
        raise SystemExit(f"unknown variant {variant}")
    marks, gc_runs = {}, {"full": 0, "seconds": 0.0}

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        if variant == "freeze":
            gc.freeze()
        result = runner.extract_codes(*args, **kwargs)
        if variant == "freeze":
            gc.unfreeze()
        marks["inside"] = time.perf_counter() - t0
        marks["images"] = result.n_extracted
        marks["runtime"] = result.runtime
        return result

    def on_gc(phase, info):
        if phase == "start":
            marks["gc_start"] = time.perf_counter()
        else:
            gc_runs["seconds"] += time.perf_counter() - marks["gc_start"]
            gc_runs["full"] += info["generation"] == 2

    extract.extract_codes = timed  # what the CLI imports when it runs
    gc.callbacks.append(on_gc)
    code = pipeline.main(["extract", root, "-o", out, "--overwrite", "--quiet"])
    gc.callbacks.remove(on_gc)
    print(json.dumps({"code": code, "inside": marks["inside"], "images": marks["images"],
                      "runtime": marks["runtime"], "gc_full": gc_runs["full"], "gc_seconds": gc_runs["seconds"]}))


# ============================================================================ parent
def run_one(variant: str, precision: str, root: Path, out: Path) -> dict:
    """One fresh child: its JSON, its whole-process seconds and its process tree's CPU seconds."""
    env = dict(os.environ, CNNCODES_CACHE_DIR=str(CACHE_DIR))
    env.pop("CNNCODES_CPU_CAPABILITIES", None)
    if PRECISIONS[precision]:
        env["CNNCODES_CPU_CAPABILITIES"] = PRECISIONS[precision]
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--child", variant, str(root), str(out)],
                          capture_output=True, text=True, env=env, cwd=str(common.REPO))
    whole, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {precision} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    res.update(whole=whole, cpu=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
    return res


def rotated(round_index: int) -> list[str]:
    """The variants rotated by the round, and reversed every other round."""
    k = round_index % len(VARIANTS)
    order = list(VARIANTS[k:] + VARIANTS[:k])
    return order if (round_index // len(VARIANTS)) % 2 == 0 else order[::-1]


def measure(sets: dict[str, Path], rounds: range, log: Path | None) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="cnncodes-machinery-") as tmp:
        out = Path(tmp) / "codes.h5"
        for precision in PRECISIONS:  # untimed: fill the converted-model cache
            run_one("base", precision, sets[min(sets)], out)
        for r in rounds:
            for set_name, root in sets.items():
                for precision in PRECISIONS:
                    for variant in rotated(r):
                        res = run_one(variant, precision, root, out)
                        res.update(round=r, set=set_name, precision=precision, variant=variant,
                                   load=os.getloadavg()[0])
                        runs.append(res)
                        print(f"  round {r}  {set_name} {precision:6s} {variant:8s} inside {res['inside']:6.2f} s  "
                              f"whole {res['whole']:6.2f} s  CPU {res['cpu']:6.2f} s  full GCs {res['gc_full']} "
                              f"({res['gc_seconds']:.2f} s)  {res['images']} images, {res['runtime']}; "
                              f"{common.load_average()}", flush=True)
                        if log:
                            with log.open("a") as f:
                                f.write(json.dumps(res) + "\n")
    return runs


def report(runs: list[dict]) -> None:
    """Median per-round ratios variant / base (inside, whole, CPU), with their range over rounds."""
    by = {(r["set"], r["precision"], r["variant"], r["round"]): r for r in runs}
    loads = [r["load"] for r in runs]
    print(f"\n{len({r['round'] for r in runs})} rounds, load average (1 min) {min(loads):.1f}-{max(loads):.1f} "
          f"during the runs")
    for set_name in sorted({r["set"] for r in runs}):
        for precision in PRECISIONS:
            base = [r for r in runs if (r["set"], r["precision"], r["variant"]) == (set_name, precision, "base")]
            if not base:
                continue
            print(f"\n{set_name}, {precision} ({base[0]['runtime']}): base median inside "
                  f"{statistics.median(r['inside'] for r in base):.2f} s, whole "
                  f"{statistics.median(r['whole'] for r in base):.2f} s, CPU "
                  f"{statistics.median(r['cpu'] for r in base):.2f} s, full GCs "
                  f"{statistics.median(r['gc_full'] for r in base):.0f}")
            for variant in sorted({r["variant"] for r in runs} - {"base"}):  # a log's own (older ones: nofreeze)
                cells = []
                for key in ("inside", "whole", "cpu"):
                    ratios = [by[(set_name, precision, variant, b["round"])][key] / b[key] for b in base
                              if (set_name, precision, variant, b["round"]) in by]
                    if ratios:
                        cells.append(f"{key} {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f}, "
                                     f"base faster {sum(x > 1 for x in ratios)}/{len(ratios)})")
                gcs = [r["gc_full"] for r in runs if (r["set"], r["precision"], r["variant"]) == (set_name, precision,
                                                                                                  variant)]
                print(f"  {variant:8s} / base: {'; '.join(cells)}; full GCs {statistics.median(gcs):.0f}")
    # round-to-round noise: how much base itself moves (each round's base over the median base)
    for set_name in sorted({r["set"] for r in runs}):
        for precision in PRECISIONS:
            inside = [r["inside"] for r in runs if (r["set"], r["precision"], r["variant"]) == (set_name, precision,
                                                                                               "base")]
            if len(inside) > 1:
                m = statistics.median(inside)
                print(f"noise {set_name} {precision}: base inside / its median, rounds "
                      f"{' '.join(f'{x / m:.2f}' for x in inside)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--first-round", type=int, default=0, help="index of the first round (rotation; default 0)")
    ap.add_argument("--sets", default="x1,x5", help="hymenoptera repeated: x1, x5 (default both)")
    ap.add_argument("--log", type=Path, help="append every run to this JSON-lines file")
    ap.add_argument("--report", type=Path, help="only print the summary of a --log file")
    ap.add_argument("--from-round", type=int, default=0, help="--report: leave out the rounds before this one")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.report:
        runs = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        report([r for r in runs if r["round"] >= args.from_round])
        return 0
    images, desc = common.standard_images(False)
    sets = {name: common.repeated(images, desc, int(name[1:]))[0] for name in args.sets.split(",")}
    print(f"extract machinery A/B: {', '.join(VARIANTS)}; rounds {args.first_round}-"
          f"{args.first_round + args.rounds - 1}; {common.load_average()}")
    print(f"cpu: {common.cpu_line()}; fp32 = CNNCODES_CPU_CAPABILITIES={PRECISIONS['fp32']}")
    print(f"images: {desc}; sets {args.sets}")
    runs = measure(sets, range(args.first_round, args.first_round + args.rounds), args.log)
    report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
