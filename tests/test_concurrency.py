"""One writer per codes file: a second extraction into the same output is refused at once, naming the
holder; a lock left by a killed run does not block the rerun."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pipeline
from extract import codesfile, lock, parts
from fault_injection import extract_command, make_images


def _wait_for_a_part(proc: subprocess.Popen, out, timeout: float = 300.0) -> None:
    """Until the first run has written a part (so it holds the lock and is mid-extraction)."""
    deadline = time.monotonic() + timeout
    while not list(parts.parts_dir_for(out).glob("part-*.npz")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first run wrote no part"
        time.sleep(0.01)


def test_a_second_extraction_into_the_same_file_is_refused_naming_the_first(tmp_path, capsys):
    source = make_images(tmp_path / "images", 64)
    out = tmp_path / "codes.h5"
    first = subprocess.Popen(extract_command(source, out, part_size=8), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_part(first, out)
        os.kill(first.pid, signal.SIGSTOP)  # it cannot finish while the second one tries
        second = subprocess.run(extract_command(source, out, part_size=8), capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"is being written by another extraction (process {first.pid} on {socket.gethostname()})" in line
        assert line.startswith("cnncodes extract: error:")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert codesfile.is_complete(out) and not lock.lock_path(out).exists()


def test_a_killed_run_leaves_no_lock_that_blocks_the_rerun(tmp_path, capsys):
    source = make_images(tmp_path / "images", 64)
    out = tmp_path / "codes.h5"
    first = subprocess.Popen(extract_command(source, out, part_size=8), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for_a_part(first, out)
    first.kill()
    first.wait(timeout=60)
    assert lock.lock_path(out).exists()  # the lock file stays behind; the lock itself died with the process
    cmd = extract_command(source, out, part_size=8)
    assert pipeline.main(cmd[cmd.index("extract"):]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert codesfile.is_complete(out) and not lock.lock_path(out).exists()
