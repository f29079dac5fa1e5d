"""Output files that are either fully written or not there at all (see extract/atomic.py)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

from cnncodes.extract.atomic import Content, publish, temporary_name, write_content
from cnncodes.extract.errors import UsageError


def ensure_writable(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there; ValueError otherwise."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to output directory {out_dir}: {err.strerror or err}") from err
    return out_dir


def write_files(out_dir: str | os.PathLike, files: Mapping[str, Content]) -> list[Path]:
    """Write every file under a temporary name, then rename them all into place.

    ``files`` maps a file name to its bytes, its text, or a function that writes the given path.
    If anything fails, the temporary files are removed and no target file is touched.
    """
    out_dir = ensure_writable(out_dir)
    temps: list[tuple[Path, Path]] = []
    try:
        for name, content in files.items():
            target = out_dir / name
            tmp = temporary_name(target)
            temps.append((tmp, target))
            write_content(tmp, content)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in temps:
        publish(tmp, target)
    return [target for _, target in temps]
