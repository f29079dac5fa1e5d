"""One writer per codes file: a second extraction into the same output is refused at once.

The lock is a POSIX record lock (``fcntl.lockf``) on ``.OUT.lock`` next to the output. The kernel
releases it when the holding process ends, however it ends, so a lock left by a killed run never
blocks a rerun. Unlike ``flock``, it is not shared with forked children: a decode worker that
outlives a killed run for a moment does not keep holding it. The file only says who holds the
lock (pid and host) for the refusal message.
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


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the lock of ``out`` for the block; ExtractionError naming the holder when another process has it."""
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise ExtractionError(f"{out} is being written by another extraction ({holder}); wait for it to "
                                  f"finish, or write to another file") from None
        if _same_file(fd, path):  # not a lock file that its holder deleted as we opened it
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiting opener then sees another inode
        os.close(fd)


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text or "a process that is starting"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
