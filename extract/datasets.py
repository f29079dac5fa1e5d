"""Built-in real datasets written out as image folder trees (offline: they ship with scikit-learn)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: str | os.PathLike, size: int = 32, test_fraction: float = 0.3, seed: int = 0,
                 per_class: int | None = None) -> dict[str, int]:
    """Write scikit-learn's 1,797 handwritten digit scans as ``root/{train,test}/<digit>/digit_<n>.png``.

    The 8x8 scans (16 grey levels) are scaled to 0-255 and upsampled to ``size`` pixels; the split is
    stratified and seeded; ``per_class`` caps the images per digit. Returns the count per split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    if per_class is not None:
        index = np.concatenate([np.flatnonzero(digits.target == d)[:per_class] for d in range(10)])
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=digits.target[index])
    counts: Counter = Counter()
    for split, rows in (("train", train), ("test", test)):
        for i in rows:
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            path = Path(root) / split / str(digits.target[i]) / f"digit_{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(path)
            counts[split] += 1
    return dict(counts)
