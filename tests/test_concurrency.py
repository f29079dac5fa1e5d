"""One writer per codes file: a second extraction into the same output is refused at once, naming the
holder; a lock left by a killed run does not block the rerun."""
from __future__ import annotations

import socket
import subprocess

from cnncodes import pipeline
from cnncodes.extract import codesfile, lock
from fault_injection import extract_command, make_images
from paused_run import PausedRun


def test_a_second_extraction_into_the_same_file_is_refused_naming_the_first(tmp_path, capsys):
    source = make_images(tmp_path / "images", 64)
    out = tmp_path / "codes.h5"
    first = PausedRun(extract_command(source, out, part_size=8)[2:])  # mid-extraction, holding the lock
    try:
        second = subprocess.run(extract_command(source, out, part_size=8), capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"is being written by another extraction (process {first.pid} on {socket.gethostname()})" in line
        assert line.startswith("cnncodes extract: error:")
    finally:
        code, _, err = first.finish()
    assert code == 0, err
    assert codesfile.is_complete(out) and not lock.lock_path(out).exists()


def test_a_killed_run_leaves_no_lock_that_blocks_the_rerun(tmp_path, capsys):
    source = make_images(tmp_path / "images", 64)
    out = tmp_path / "codes.h5"
    first = PausedRun(extract_command(source, out, part_size=8)[2:])  # mid-extraction, holding the lock
    first.proc.kill()  # SIGKILL to the main process only: its decode worker holds no lock
    first.finish(timeout=60)
    assert lock.lock_path(out).exists()  # the lock file stays behind; the lock itself died with the process
    cmd = extract_command(source, out, part_size=8)
    assert pipeline.main(cmd[cmd.index("extract"):]) == 0
    assert "resumed from 1 saved part(s)" in capsys.readouterr().out  # the part saved before the kill
    assert codesfile.is_complete(out) and not lock.lock_path(out).exists()
