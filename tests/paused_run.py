"""A `cnncodes` command in a child process that pauses once its first part file is saved.

Tests that must act on a run in the middle of an extraction (interrupt it, kill it, or start another
run beside it) start it with ``PausedRun`` instead of polling the parts folder: the child wraps
``extract.parts.write_part`` (the one function that publishes a part), and after the first part is
on disk it prints a line and waits for a line on its stdin. The test reads that line, so it knows
the run is paused there, holding its lock, with exactly one part saved; no timing is involved.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

PAUSED = "PAUSED AFTER THE FIRST PART"

CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from cnncodes.extract import parts

write_part, paused = parts.write_part, []

def write_then_pause(path, *args, **kwargs):
    write_part(path, *args, **kwargs)
    if not paused:
        paused.append(path)
        print({PAUSED!r}, path, flush=True)
        sys.stdin.readline()  # until the test lets it go on (or closes the pipe)

parts.write_part = write_then_pause
from cnncodes import pipeline
sys.exit(pipeline.main(sys.argv[1:]))
"""


class PausedRun:
    """``cnncodes *argv`` in a child process, returned once it is paused after saving its first part."""

    def __init__(self, argv: list[str], **popen):
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file: a chatty child never blocks on a full pipe
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, **popen)
        self.pid = self.proc.pid
        self.said: list[str] = []  # stdout lines printed before the pause
        for line in self.proc.stdout:
            if line.startswith(PAUSED):
                self.part = Path(line[len(PAUSED):].strip())
                return
            self.said.append(line)
        code, _, err = self.finish()
        raise AssertionError(f"the run ended (exit {code}) before it saved a part: {err}")

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Let the run go on (where it still runs) and wait for it: its exit code, whole stdout and stderr."""
        with contextlib.suppress(BrokenPipeError):  # a run killed or interrupted reads nothing more
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        out = self.proc.stdout.read()  # until the run and its decode workers have closed it
        self.proc.stdout.close()
        code = self.proc.wait(timeout)
        self._stderr.seek(0)
        err = self._stderr.read()
        self._stderr.close()
        return code, "".join(self.said) + out, err
