"""Start-up: whole-process times of `cnncodes --help`, `cnncodes info`, a warm `extract` of 8 images and a warm
`predict RUN one.jpg` (medians of fresh processes), with the phase times of the two runs, for this tree's code and,
with ``--before TREE`` (e.g. /work/main), another tree's, alternating in the same rounds.

Warm: the converted model is cached (an untimed run of each tree fills the cache first). RUN is a `cnncodes run`
folder (svm) made once on hymenoptera (a generated set when ../shared is absent). The phases are measured inside each
child process by wrapping the runner's steps: imports (process start to the listing, the classifier's loading left
out), listing, model load (network + compiled model), first batch (compiled model to the first codes), assembly,
classifier (predict: loading the model), in process (the child's own clock), cpu (its main process's user + system
CPU seconds, threads included: what a busy machine stretches least), and whole process (the parent's clock). The
main process's CPU seconds from its start to the decoders' start ("cpu to decoders": the one core's alone) and to
the first decoded batch it takes ("cpu to batch"), its main thread's CPU seconds (the Python), and the CPU seconds
of the whole process tree, decoders included ("cpu tree", the parent's count), come beside them. ``--images DIR``
extracts DIR instead of the 8 images, where the per-batch work weighs (e.g. the benchmarks' hymenoptera x5). Each
tree runs as the package ``cnncodes`` (``common.package_root``), whatever is installed.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

T0 = time.perf_counter()
COMMANDS = ("help", "info", "extract", "predict")
PHASES = ("imports", "listing", "model load", "first batch", "assembly", "classifier", "in process", "cpu to decoders",
          "cpu to batch", "cpu main thread", "cpu")


def child(package_root: str, argv: list[str]) -> None:
    """Run the command line of the package under ``package_root`` on ``argv`` in this process, timing its phases;
    print them as JSON."""
    sys.path.insert(0, package_root)
    marks: dict[str, float] = {}
    spent = {"classifier": 0.0, "model load": 0.0}
    from cnncodes import pipeline

    pipeline.process_settings()  # before NumPy loads (instrumenting imports it), as the command line makes them
    if argv[0] in ("extract", "predict"):
        _instrument(marks, spent, argv[0])
    try:
        code = pipeline.main(argv)
    except SystemExit as exit_:  # --help
        code = exit_.code
    end = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    phases = {"in process": end - T0, "cpu": usage.ru_utime + usage.ru_stime, "cpu main thread": time.thread_time()}
    if "listing start" in marks:
        phases.update({
            "imports": marks["listing start"] - T0 - marks.get("classifier before listing", 0.0),
            "listing": marks["listing end"] - marks["listing start"], "model load": spent["model load"],
            "first batch": marks["first batch"] - marks["computer"], "assembly": marks["assembly"],
            "classifier": spent["classifier"]})
    phases.update({name: marks[name] for name in ("cpu to decoders", "cpu to batch") if name in marks})
    print(json.dumps({"code": code, "phases": phases}), flush=True)


def _instrument(marks: dict, spent: dict, command: str) -> None:
    """Wrap the runner's steps (the same names in older trees) to time them; for predict, the classifier's loading
    too (only there: importing its module would load scikit-learn into an extract)."""
    from cnncodes.extract import runner

    def timed(module, name, phase=None, start=None, end=None, after=None):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            if start:
                marks.setdefault(start, began)
            result = original(*args, **kwargs)
            done = time.perf_counter()
            if phase:
                spent[phase] += done - began
            if end:
                marks.setdefault(end, done)
            return after(result) if after else result
        setattr(module, name, wrapper)

    def first_marked(batches):
        for batch in batches:
            marks.setdefault("first batch", time.perf_counter())
            yield batch

    def mark_map(computer):
        original = computer.map
        computer.map = lambda batches: first_marked(original(batches))
        return computer

    try:
        from cnncodes.extract.batches import Decoding as decoding
    except ImportError:  # an older tree
        decoding = None
    if decoding is not None:  # the main process's CPU seconds when the decoders start, and at its first batch
        start, take = decoding.__init__, decoding.__next__

        def started(self, *args, **kwargs):
            marks.setdefault("cpu to decoders", time.process_time())
            start(self, *args, **kwargs)

        def taken(self):
            batch = take(self)
            marks.setdefault("cpu to batch", time.process_time())
            return batch
        decoding.__init__, decoding.__next__ = started, taken
    timed(runner, "list_images", start="listing start", end="listing end")
    timed(runner, "prepare", phase="model load")
    timed(runner, "make_computer", phase="model load", end="computer", after=mark_map)
    original_assemble = runner.shards.assemble_when_complete

    def assemble(*args, **kwargs):
        began = time.perf_counter()
        result = original_assemble(*args, **kwargs)
        marks["assembly"] = time.perf_counter() - began
        return result
    runner.shards.assemble_when_complete = assemble
    if command != "predict":
        return
    try:
        from cnncodes.classify import predict
    except ImportError:
        return
    original_load = predict.load_model

    def load_model(*args, **kwargs):
        began = time.perf_counter()
        result = original_load(*args, **kwargs)
        spent["classifier"] += time.perf_counter() - began
        if "listing start" not in marks:
            marks["classifier before listing"] = spent["classifier"]
        return result
    predict.load_model = load_model


# ------------------------------------------------------------------------------------------------ parent
def main(argv=None) -> int:
    import argparse
    import statistics
    import subprocess
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="another source tree to time side by side (e.g. /work/main)")
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per command and tree (default 5)")
    ap.add_argument("--images", type=Path, help="the folder `extract` reads (default: 8 hymenoptera JPEGs)")
    ap.add_argument("--extract-args", default="", help="more options of extract, e.g. '--precision fp32'")
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"which of {','.join(COMMANDS)} (default: all)")
    args = ap.parse_args(argv)
    trees = {"after": str(common.package_root(common.REPO)),
             **({"before": str(common.package_root(args.before))} if args.before else {})}
    work = common.CACHE / "startup"
    env = {**os.environ, "CNNCODES_CACHE_DIR": str(work / "openvino"), "OMP_WAIT_POLICY": "PASSIVE"}
    eight, one, run = _inputs(work, common, env)
    commands = {"help": ["--help"], "info": ["info", str(run.parent / "codes.h5")],
                "extract": ["extract", str(args.images or eight), "-o", str(work / "out.h5"), "--overwrite", "--quiet",
                            *args.extract_args.split()],
                "predict": ["predict", str(run), str(one), "-o", str(work / "p.csv"), "--overwrite", "--quiet"]}
    commands = {name: commands[name] for name in args.commands.split(",")}

    def once(tree: str, command: str) -> dict:
        began, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, __file__, "--child", tree, *commands[command]], capture_output=True,
                              text=True, timeout=600, env={**env, "PYTHONPATH": tree}, cwd=str(work))
        whole, done = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{command} ({tree}) failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        tree_cpu = done.ru_utime + done.ru_stime - cpu.ru_utime - cpu.ru_stime
        return {**result["phases"], "cpu tree": tree_cpu, "whole process": whole}

    print(common.cpu_line())
    print(common.load_average(), "(before)")
    for tree in trees.values():  # untimed: fills each tree's converted-model cache, compiles the bytecode
        for command in commands:
            once(tree, command)
    times = {(t, c): [] for t in trees for c in commands}
    for r in range(args.repeat):
        for command in commands:
            for tree in common.order_for(r, list(trees)):
                times[tree, command].append(once(trees[tree], command))
    print(common.load_average(), "(after)")
    print(f"\nmedians of {args.repeat} fresh processes, seconds ({', '.join(f'{k}: {v}' for k, v in trees.items())})")
    columns = [*PHASES, "cpu tree", "whole process"]
    print(f"{'command':<9} {'tree':<7}" + "".join(f"{c:>14}" for c in columns))
    for command in commands:
        for tree in trees:
            runs = times[tree, command]
            cells = [statistics.median([r[c] for r in runs]) if c in runs[0] else None for c in columns]
            print(f"{command:<9} {tree:<7}" + "".join(f"{v:>14.3f}" if v is not None else f"{'':>14}" for v in cells))
        if "before" in trees:
            for column in ("whole process", "cpu tree", "cpu", "cpu main thread", "cpu to decoders", "cpu to batch"):
                pairs = [(a[column], b[column]) for a, b in zip(times["after", command], times["before", command])
                         if column in a and column in b]
                if pairs:
                    print(f"{'':<9} before / after, {column} (median of per-round ratios): "
                          f"{statistics.median(b / a for a, b in pairs):.3f}x; median difference "
                          f"{statistics.median(b - a for a, b in pairs):+.3f} s")
    return 0


def _inputs(work, common, env):
    """8 JPEGs, one of them alone, and a `cnncodes run` folder (made once, with this tree's code)."""
    import shutil
    import subprocess

    source = common.HYMENOPTERA
    if not source.is_dir():
        source = common.make_jpeg_tree(work / "generated", 64, (500, 375))
    eight = work / "eight"
    if not eight.is_dir():
        for f in (f for folder in sorted(source.glob("val/*")) for f in sorted(folder.glob("*.jpg"))[:4]):
            (eight / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, eight / f.parent.name / f.name)
    one = work / "one.jpg"
    if not one.is_file():
        shutil.copy(sorted(eight.glob("*/*.jpg"))[0], one)
    run = work / "run"
    if not (run / "classify" / "model.joblib").is_file():
        subprocess.run([sys.executable, "-m", "cnncodes.pipeline", "run", str(source), "--out", str(run),
                        "--classifiers", "svm", "--quiet", "--overwrite"], check=True, cwd=str(work),
                       env={**env, "PYTHONPATH": str(common.package_root(common.REPO))}, capture_output=True)
    return eight, one, run / "classify"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
