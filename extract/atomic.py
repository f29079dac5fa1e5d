"""Files that are either complete or absent: every writer of cnncodes goes through here.

A file is written under a temporary name in its own folder (``.NAME.<pid>.tmp``), flushed to disk,
then renamed over its target, so a kill or a full disk never leaves a half-written file under the
real name. Torch-free: classify and the codes-file readers import it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

Content = Union[bytes, str, Callable[[Path], None]]


def temporary_name(target: Path) -> Path:
    """Where ``target`` is written before it is renamed into place."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


@contextmanager
def writing(target: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary path to write ``target`` to; on success it is fsynced and renamed over
    ``target``, on any error (or a Ctrl-C) it is deleted and ``target`` is left as it was."""
    target = Path(target)
    tmp = temporary_name(target)
    try:
        yield tmp
        publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(target: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` (bytes, text, or a function writing the path it is given) to ``target`` atomically."""
    with writing(target) as tmp:
        write_content(tmp, content)
    return Path(target)


def write_content(path: Path, content: Content) -> None:
    if callable(content):
        content(path)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)


def publish(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``target`` (for writers that publish several files together)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
