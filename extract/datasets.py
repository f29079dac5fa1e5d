"""Built-in real datasets written out as image folder trees (offline: they ship with scikit-learn)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .checks import check
from .errors import UsageError


def write_digits(root: str | os.PathLike, size: int = 32, test_fraction: float = 0.3, seed: int = 0,
                 per_class: int | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write scikit-learn's 1,797 handwritten digit scans as ``root/{train,test}/<digit>/digit_<n>.png``.

    The 8x8 scans (16 grey levels) are scaled to 0-255 and upsampled to ``size`` pixels; the split is
    stratified and seeded; ``per_class`` caps the images per digit. Returns the count per split.
    A non-empty ``root`` is refused (ValueError) unless ``overwrite``, which replaces it whole: the set is
    written to a temporary sibling folder and swapped in, so stale files never survive and an
    interrupted run leaves the old folder (or nothing) in place, never a mix.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    check("test_fraction", test_fraction)
    _check_target(root, overwrite)
    digits = load_digits()
    index = np.arange(len(digits.target))
    if per_class is not None:
        index = np.concatenate([np.flatnonzero(digits.target == d)[:per_class] for d in range(10)])
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=digits.target[index])
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.writing-", dir=root.parent))
    counts: Counter = Counter()
    try:
        for split, rows in (("train", train), ("test", test)):
            for i in rows:
                pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
                path = staging / split / str(digits.target[i]) / f"digit_{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(path)
                counts[split] += 1
        _swap_in(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dict(counts)


def _check_target(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is a file, not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise UsageError(f"{root} is not empty; choose a new folder, or pass --overwrite to replace it whole")


def _swap_in(staging: Path, root: Path) -> None:
    """Put the finished ``staging`` folder at ``root``; the old ``root`` is moved aside first, then deleted."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
    os.replace(staging, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
