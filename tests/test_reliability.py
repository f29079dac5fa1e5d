"""Reliability: killed runs resume exactly, misuse is refused clearly, nothing is overwritten or lost."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cnncodes import pipeline
from conftest import FAST
from cnncodes.extract import codesfile, open_codes, parts
from fault_injection import bad_corpus_expectations, extract_command, files_equal, kill_and_resume, make_images
from paused_run import PausedRun


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract(source, out, *extra) -> int:
    return pipeline.main(["extract", str(source), "-o", str(out), *FAST, "--workers", "0", *extra])


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_file(tmp_path):
    source = make_images(tmp_path / "images", 96)
    report = kill_and_resume(source, tmp_path, kills=4, part_size=16, seed=1, log=lambda _: None)
    assert report.kills == 4
    assert report.lost_parts == 0 and report.incomplete_outputs == 0
    assert report.equal and report.n_images == 96


def test_a_kill_while_the_parts_are_removed_leaves_nothing_a_rerun_trips_on(image_tree, tmp_path, monkeypatch):
    """A kill during the parts folder's removal (after the file is complete) used to leave job.json without
    rows.h5: with the file deleted, the rerun failed with exit 2 on the missing rows file."""
    import shutil

    out, rmtree = tmp_path / "codes.h5", shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        if Path(path) != parts.parts_dir_for(out):
            return rmtree(path, *args, **kwargs)
        Path(path, parts.ROWS_FILE).unlink(missing_ok=True)  # what rmtree had removed when the kill came
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    assert extract(image_tree, out, "--part-size", "4") == 130
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert parts.parts_dir_for(out).exists() and not (parts.parts_dir_for(out) / parts.ROWS_FILE).exists()
    out.unlink(missing_ok=True)  # the user starts over
    assert extract(image_tree, out, "--part-size", "4") == 0
    assert codesfile.is_complete(out) and not parts.parts_dir_for(out).exists()


def test_sigint_stops_cleanly_and_says_how_to_resume(tmp_path):
    source = make_images(tmp_path / "images", 64)
    out = tmp_path / "codes.h5"
    cmd = extract_command(source, out, part_size=16)
    run = PausedRun(cmd[2:])  # paused once its first part is saved: 3 of 4 parts are left to do
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish(timeout=60)
    assert code == 130
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err
    assert "interrupted: 1 of 4 parts are saved" in err
    assert not out.exists() and not list(tmp_path.glob(".codes.h5.*.tmp"))  # the file it was writing is gone
    saved = len(list(parts.parts_dir_for(out).glob("part-*.npz")))
    assert saved == 1
    done = subprocess.run(cmd[:-1], capture_output=True, text=True, check=True)  # without --quiet
    assert f"64 images, {64 - 16 * saved} extracted in " in done.stdout  # resumed rows are not counted as extracted
    assert f"{16 * saved} reused: resumed from {saved} saved part(s)" in done.stdout
    assert codesfile.is_complete(out) and not parts.parts_dir_for(out).exists()


def test_existing_file_with_another_recipe_is_refused_unless_overwrite(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    assert extract(image_tree, out) == 0
    before = digest(out)
    assert extract(image_tree, out, "--layer", "block4") == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "taps" in err and "--overwrite" in err
    assert digest(out) == before
    assert extract(image_tree, out, "--layer", "block4", "--overwrite") == 0
    assert open_codes(out).taps == ["block4"]


def test_changed_image_set_is_detected_and_update_extracts_only_the_changes(image_tree, tmp_path, capsys):
    from conftest import write_image

    out = tmp_path / "codes.h5"
    assert extract(image_tree, out) == 0
    before = digest(out)
    rng = np.random.default_rng(5)
    write_image(image_tree / "cat" / "new_one.png", rng, cls=0)  # new
    (image_tree / "dog" / "img_000.png").unlink()  # removed
    write_image(image_tree / "dog" / "img_001.png", rng, size=(90, 70), cls=1)  # modified
    assert extract(image_tree, out) == 2
    err = capsys.readouterr().err
    assert "1 new, 1 removed, 1 modified" in err and "--update" in err
    assert digest(out) == before
    assert extract(image_tree, out, "--update") == 0
    assert "update: 1 new, 1 removed, 1 modified" in capsys.readouterr().out
    fresh = tmp_path / "fresh.h5"
    assert extract(image_tree, fresh) == 0
    assert files_equal(out, fresh)


def _as_nobody(fn, *args):
    """Run ``fn`` in a forked child as uid/gid 65534 (root ignores permissions) and return its result."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child():
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        queue.put(fn(*args))

    proc = ctx.Process(target=child)
    proc.start()
    result = queue.get(timeout=120)
    proc.join()
    return result


def test_unwritable_output_folder_is_a_clear_error(image_tree):
    with tempfile.TemporaryDirectory() as shared:  # under /tmp, which an unprivileged user may traverse
        Path(shared).chmod(0o755)
        locked = Path(shared) / "locked"
        locked.mkdir(mode=0o555)
        _check_refused(image_tree, locked)


def _check_refused(image_tree: Path, locked: Path) -> None:
    def run():
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = pipeline.main(["extract", str(image_tree), "-o", str(locked / "codes.h5"), *FAST])
        return code, err.getvalue()

    code, err = _as_nobody(run)
    assert code == 2 and "cannot write" in err and "Permission denied" in err
    assert list(locked.iterdir()) == []


def test_disk_full_keeps_the_previous_file_intact(image_tree, tmp_path):
    out = tmp_path / "codes.h5"
    subprocess.run(extract_command(image_tree, out, 8), check=True, capture_output=True)
    before = digest(out)
    limit = out.stat().st_size // 2

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past this fail with EFBIG

    cmd = extract_command(image_tree, out, 8, ["--overwrite", "--layer", "block5", "--layer", "penultimate",
                                               "--pool", "max"])
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_disk)
    assert proc.returncode == 2, proc.stderr
    assert "error" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(out) == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_part_write_that_hits_a_full_disk_leaves_nothing_behind(tmp_path):
    target = tmp_path / "part-000000.npz"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(OSError):
            parts.write_part(target, {"penultimate": np.ones((64, 1280), np.float32)}, np.ones(64, bool), [""] * 64)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


def test_bad_images_are_recorded_and_good_ones_get_codes(tmp_path, capsys):
    corpus = tmp_path / "scraped" / "mixed"
    expected = bad_corpus_expectations(corpus)
    out = tmp_path / "codes.h5"
    assert extract(corpus.parent, out, "--workers", "1", "--strict") == 1  # workers decode; --strict flags failures
    summary = capsys.readouterr().out
    cf = open_codes(out)
    seen = {Path(p).name: (bool(ok), err) for p, ok, err in zip(cf.rows.paths, cf.rows.ok, cf.rows.errors)}
    assert seen.keys() == expected.keys()
    for name, readable in expected.items():
        ok, err = seen[name]
        assert ok == readable, (name, err)
        assert bool(err) != ok and "\n" not in err
        if not ok:
            assert f"mixed/{name}: {err}" in summary
    codes = cf.codes["penultimate"]
    assert np.isfinite(codes[cf.rows.ok]).all() and np.isnan(codes[~cf.rows.ok]).all()


def test_failed_images_are_nan_and_strict_exits_non_zero(image_tree, tmp_path, capsys):
    (image_tree / "cat" / "zero.jpg").write_bytes(b"")
    out = tmp_path / "codes.h5"
    assert extract(image_tree, out, "--strict") == 1
    assert "cat/zero.jpg" in capsys.readouterr().out
    cf = open_codes(out)
    bad = list(cf.rows.paths).index("cat/zero.jpg")
    assert not cf.rows.ok[bad] and cf.rows.errors[bad]
    assert np.isnan(cf.codes["penultimate"][bad]).all()
    assert np.isfinite(cf.codes["penultimate"][cf.rows.ok]).all()


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """4x the images must not need more memory: codes stream to part files and are assembled part by part."""
    probe = ("import resource, sys; sys.path.insert(0, {root!r}); from cnncodes import pipeline; "
             "code = pipeline.main(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    peaks = {}
    for n in (400, 1600):
        source = make_images(tmp_path / f"images_{n}", n)
        out = tmp_path / f"codes_{n}.h5"
        # Unpooled block2 maps: 144 KiB of codes per image, so holding them all would show (+170 MiB at 4x).
        args = ["extract", str(source), "-o", str(out), "--weights", "random", "--resize", "72", "--crop", "64",
                "--layer", "block2", "--pool", "none", "--part-size", "64", "--workers", "0", "--quiet"]
        proc = subprocess.run([sys.executable, "-c", probe.format(root=str(Path(pipeline.__file__).parent)), *args],
                              capture_output=True, text=True, check=True)
        peaks[n] = int(proc.stdout.strip().splitlines()[-1]) / 1024  # MiB
    assert peaks[1600] <= peaks[400] * 1.1 + 40, peaks


def _watch_decoding(monkeypatch) -> list[str]:
    """Record, in order, each start of decoders and each preparation of the network (built, or read from the cache)."""
    from cnncodes.extract import batches, runner

    events, decoded, prepare = [], batches.decoded_batches, runner.prepare
    monkeypatch.setattr(batches, "decoded_batches", lambda *a, **k: events.append("decode") or decoded(*a, **k))
    monkeypatch.setattr(runner, "prepare", lambda *a, **k: events.append("build") or prepare(*a, **k))
    return events


def test_a_fresh_job_decodes_while_the_network_is_built_and_a_rerun_after(image_tree, tmp_path, monkeypatch):
    events = _watch_decoding(monkeypatch)
    out = tmp_path / "codes.h5"
    assert extract(image_tree, out) == 0
    assert events == ["decode", "build"]  # nothing to reuse: decoding starts first
    (image_tree / "cat" / "img_000.png").unlink()
    events.clear()
    assert extract(image_tree, out, "--update") == 0  # nothing new to decode
    assert events == ["build"]


def test_early_decoders_for_a_job_that_turned_out_otherwise_are_replaced(image_tree, tmp_path, monkeypatch):
    """If a file or parts appear while the network is built, the plan differs from the early guess (every
    row): those decoders are dropped and the planned rows decoded instead."""
    from conftest import write_image
    from cnncodes.extract import runner

    out = tmp_path / "codes.h5"
    assert extract(image_tree, out) == 0
    write_image(image_tree / "cat" / "new_one.png", np.random.default_rng(5), cls=0)
    monkeypatch.setattr(runner, "fresh", lambda *args: True)  # as if the file had appeared after the check
    events = _watch_decoding(monkeypatch)
    assert extract(image_tree, out, "--update") == 0
    assert events == ["decode", "build", "decode"]
    again = tmp_path / "again.h5"
    assert extract(image_tree, again) == 0
    assert files_equal(out, again)


def test_a_collection_with_no_readable_image_fails_in_one_line(tmp_path, capsys):
    images = tmp_path / "images"
    for cls in ("cat", "dog"):
        (images / cls).mkdir(parents=True)
        (images / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    codes = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(images), "-o", str(codes), *FAST, "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cnncodes extract: error: none of the 2 image(s) could be read (first: cat/broken.png")
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no readable, labeled rows to train on (2 of 2 images could not be read" in err
    assert "n_samples" not in err
