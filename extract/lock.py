"""One writer per codes file, or one per shard: a second extraction into the same output is refused at once.

The lock is a set of POSIX record locks (``fcntl.lockf``) on ``.OUT.lock`` next to the output. The
kernel releases them when the holding process ends, however it ends, so a lock left by a killed
run never blocks a rerun. Unlike ``flock``, they are not shared with forked children: a decode
worker that outlives a killed run for a moment does not keep holding them. The file is cut into
slots of ``SLOT`` bytes, each holding the text that names its holder for the refusal message:

- slot 0, the job: a single-process run locks the whole file exclusively; every shard (and
  ``cnncodes assemble``) holds slot 0 shared, so shards run together but never beside a single run;
- slot 1, the step: held exclusively for a moment to open the job or assemble the file (ranks wait);
- slot 2 + r, shard r: exclusively by the process extracting shard r.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ExtractionError

SLOT = 256
JOB, STEP = 0, 1
JOINER = -1  # output_lock's shard for a process that joins a sharded job without extracting (assemble)


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """The locks one process holds on an output (one descriptor: POSIX locks go with any close)."""

    def __init__(self, fd: int, whole: bool):
        self.fd, self.whole = fd, whole

    @contextmanager
    def step(self) -> Iterator[None]:
        """Exclusive among the job's processes for the block (a single run holds everything already)."""
        if self.whole:
            yield
            return
        fcntl.lockf(self.fd, fcntl.LOCK_EX, SLOT, STEP * SLOT)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, SLOT, STEP * SLOT)


@contextmanager
def output_lock(out: Path, shard: int | None = None, by: str = "extraction") -> Iterator[OutputLock]:
    """Hold the lock of ``out`` (``shard`` None: the whole output; r: shard r; JOINER: the job shared)
    for the block; ExtractionError naming the holder (another ``by``) when another process has it."""
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if shard is None:
                _take(fd, fcntl.LOCK_EX, 0, 0, f"{out} is being written by another {by}")
            else:
                _take(fd, fcntl.LOCK_SH, SLOT, JOB * SLOT, f"{out} is being written by another {by}")
                if shard >= 0:
                    _take(fd, fcntl.LOCK_EX, SLOT, (2 + shard) * SLOT,
                          f"shard {shard} of {out} is being written by another {by}")
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):  # not a lock file that its holder deleted as we opened it
            break
        os.close(fd)
    try:
        if shard != JOINER:
            text = f"process {os.getpid()} on {socket.gethostname()}" if shard is None else "sharded: shards run"
            _write_slot(fd, JOB, text)
            if shard is not None:
                _write_slot(fd, 2 + shard, f"process {os.getpid()} on {socket.gethostname()}")
        yield OutputLock(fd, whole=shard is None)
    finally:
        _release(fd, path, shard is None)


def _take(fd: int, how: int, length: int, start: int, refusal: str) -> None:
    try:
        fcntl.lockf(fd, how | fcntl.LOCK_NB, length, start)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise ExtractionError(f"{refusal} ({_read_holder(fd, start // SLOT)}); wait for it to finish, "
                              "or write elsewhere") from None


def _release(fd: int, path: Path, whole: bool) -> None:
    """Delete the lock file while holding it whole (a waiting opener then sees another inode): a single
    run always can; a shard only when no other process holds the job any more."""
    try:
        if not whole:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
        path.unlink(missing_ok=True)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise
    finally:
        os.close(fd)


def _write_slot(fd: int, slot: int, text: str) -> None:
    os.pwrite(fd, text.encode()[:SLOT - 1].ljust(SLOT, b"\0"), slot * SLOT)


def _read_holder(fd: int, slot: int) -> str:
    text = os.pread(fd, SLOT, slot * SLOT).split(b"\0")[0].decode(errors="replace").strip()
    if text == "sharded: shards run":
        return "the shards of a sharded extraction"
    return text or "a process that is starting"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
