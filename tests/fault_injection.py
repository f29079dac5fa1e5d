"""Fault injection: kill `cnncodes extract` with SIGKILL at random moments and check nothing is lost.

Run as a script for the full version (``python tests/fault_injection.py --kills 25``); the test
suite runs a small one. Each kill lands at a random moment of a run (start-up, mid-part, part
write, assembly); the same command is then run again. At the end the codes file must equal an
uninterrupted run's, finished parts must never have been lost, and after every kill the output is
either absent or a complete file.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnncodes.extract import codesfile, parts  # noqa: E402


@dataclass
class KillReport:
    kills: int = 0
    runs: int = 0
    parts_seen: list[int] = field(default_factory=list)
    lost_parts: int = 0
    incomplete_outputs: int = 0
    equal: bool = False
    part_size: int = 0
    n_images: int = 0
    moments: dict[str, int] = field(default_factory=dict)


def extract_command(source: Path, out: Path, part_size: int, extra: list[str] | None = None) -> list[str]:
    """The extraction every run repeats: CPU, fp32, untrained network, small inputs, small parts."""
    return [sys.executable, str(ROOT / "pipeline.py"), "extract", str(source), "-o", str(out), "--weights", "random",
            "--resize", "40", "--crop", "32", "--device", "cpu", "--precision", "fp32", "--batch-size", "8",
            "--part-size", str(part_size), "--workers", "1", "--quiet", *(extra or [])]


def _finished_parts(out: Path) -> int:
    return len(list(parts.parts_dir_for(out).glob("part-*.npz")))


def _output_is_safe(out: Path) -> bool:
    """The output is absent or complete, and every part file that exists opens and is whole."""
    if out.exists() and not codesfile.is_complete(out):
        return False
    if len(list(out.parent.glob(f".{out.name}.*.tmp"))) > 1:  # at most the killed run's own, cleared on resume
        return False
    for part in parts.parts_dir_for(out).glob("part-*.npz"):
        ok, _ = parts.read_part_rows(part)
        if len(ok) == 0:
            return False
    return True


def _timed_run(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _wait_for_a_random_moment(proc: subprocess.Popen, out: Path, done: int, n_parts: int,
                              rng: random.Random) -> str:
    """Let the run reach a random point (start-up, inside a random part, or the assembly); name it."""
    if rng.random() < 0.2:
        _wait_until(proc, lambda: False, timeout=rng.uniform(0.1, 3.0))
        return "start-up"
    files = n_parts - 1  # a single run writes its last part into the codes file only, then renames that
    if done < files and rng.random() < 0.8:
        target = rng.randint(done + 1, files)  # at least one part written by this run: past start-up
        _wait_until(proc, lambda: _finished_parts(out) >= target or out.exists())
        time.sleep(rng.uniform(0.0, 0.2))  # somewhere inside the next part (or its write)
        return "mid-extraction"
    if done == files and rng.random() < 0.5:
        proc.wait()  # let this one finish, so that later kills land in a fresh extraction again
        return "none"
    _wait_until(proc, lambda: _finished_parts(out) >= files or out.exists())
    time.sleep(rng.uniform(0.0, 0.02))
    return "last part or assembly"


def _wait_until(proc: subprocess.Popen, condition, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def kill_and_resume(source: Path, workdir: Path, kills: int, part_size: int = 16, seed: int = 0,
                    log=print) -> KillReport:
    """Kill extraction runs ``kills`` times at random moments, resume each time, compare with a clean run."""
    rng = random.Random(seed)
    reference, out = workdir / "reference.h5", workdir / "killed.h5"
    _timed_run(extract_command(source, reference, part_size))
    n_parts = -(-len(codesfile.open_codes(reference).rows) // part_size)
    report = KillReport(part_size=part_size)
    while report.kills < kills:
        if out.exists():  # finished before the kill: start over to place more kills
            out.unlink()
        before = _finished_parts(out)
        proc = subprocess.Popen(extract_command(source, out, part_size), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        report.runs += 1
        moment = _wait_for_a_random_moment(proc, out, before, n_parts, rng)
        if proc.poll() is not None:
            continue  # it finished first: no kill this time
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its workers
        proc.wait()
        report.kills += 1
        report.moments[moment] = report.moments.get(moment, 0) + 1
        after = _finished_parts(out)
        report.parts_seen.append(after)
        if not out.exists() and after < before:  # parts disappear legitimately only once the file is assembled
            report.lost_parts += before - after
        if not _output_is_safe(out):
            report.incomplete_outputs += 1
        log(f"kill {report.kills:>2} ({moment}): {after} of {n_parts} part(s) saved, "
            f"output {'complete' if out.exists() else 'absent'}")
    resumed = subprocess.run(extract_command(source, out, part_size), capture_output=True, text=True)
    assert resumed.returncode == 0, f"the resume exited {resumed.returncode}: {resumed.stderr[-2000:]}"
    report.equal = files_equal(reference, out)
    with h5py.File(out, "r") as h5:
        report.n_images = len(h5["paths"])
    return report


def files_equal(a: Path, b: Path) -> bool:
    """Same rows (paths, labels, ok, errors) and bit-identical codes for every tap."""
    ca, cb = codesfile.open_codes(a), codesfile.open_codes(b)
    same_rows = all(np.array_equal(getattr(ca.rows, f), getattr(cb.rows, f)) for f in ("paths", "labels", "ok", "errors"))
    same_codes = ca.codes.keys() == cb.codes.keys() and all(
        np.array_equal(ca.codes[k], cb.codes[k], equal_nan=True) for k in ca.codes)
    return same_rows and same_codes


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` small real PNGs in two classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        target = folder / f"class_{i % 2}" / f"img_{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(target)
    return folder


def bad_corpus_expectations(folder: Path) -> dict[str, bool]:
    """Write the bad-image corpus; {name: readable}. Root reads chmod-000 files, so there it counts as good."""
    from bad_corpus import NO_PERMISSION, make_bad_corpus

    expected = make_bad_corpus(folder)
    if os.geteuid() == 0:
        expected[NO_PERMISSION] = True
    return expected


def bad_input_run(workdir: Path) -> tuple[int, int, int, bool]:
    """Extract the bad-image corpus; return (files, bad expected, bad recorded, every good image has codes)."""
    corpus = workdir / "corpus" / "mixed"
    expected = bad_corpus_expectations(corpus)
    out = workdir / "corpus.h5"
    cmd = extract_command(corpus.parent, out, 16)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cf = codesfile.open_codes(out)
    by_name = {Path(p).name: (bool(ok), e) for p, ok, e in zip(cf.rows.paths, cf.rows.ok, cf.rows.errors)}
    recorded_bad = sum(1 for ok, _ in by_name.values() if not ok)
    good_have_codes = all(by_name[name][0] for name, ok in expected.items() if ok and name in by_name)
    finite = bool(np.isfinite(cf.codes["penultimate"][cf.rows.ok]).all())
    expected_bad = sum(1 for ok in expected.values() if not ok)
    return len(expected), expected_bad, recorded_bad, good_have_codes and finite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--part-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = make_images(work / "images", args.images, args.seed)
        report = kill_and_resume(source, work, args.kills, args.part_size, args.seed)
        n_files, bad_expected, bad_recorded, good_ok = bad_input_run(work)
    print(f"\nkill-and-resume: {report.kills} SIGKILLs over {report.runs} runs of {report.n_images} images "
          f"(parts of {report.part_size}; kills during {report.moments}); finished parts lost: {report.lost_parts}; "
          f"half-written outputs seen: {report.incomplete_outputs}; final file equal to an uninterrupted run: "
          f"{report.equal}")
    print(f"bad input: {n_files} files, {bad_expected} bad expected, {bad_recorded} recorded as failures, "
          f"every good image has finite codes: {good_ok}")
    lost_nothing = report.equal and not report.lost_parts and not report.incomplete_outputs
    lost_nothing = lost_nothing and bad_expected == bad_recorded and good_ok
    print("nothing was lost" if lost_nothing else "SOMETHING WAS LOST")
    return 0 if lost_nothing else 1


if __name__ == "__main__":
    sys.exit(main())
