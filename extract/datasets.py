"""Built-in real datasets written out as image folder trees (offline: they ship with scikit-learn)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: Path, test_fraction: float = 0.3, seed: int = 0, size: int = 32) -> int:
    """Write scikit-learn's 1,797 handwritten digit scans as ``folder/{train,test}/<digit>/<n>.png``.

    The 8x8 scans (16 grey levels) are scaled to 0-255 and upsampled to ``size`` pixels. The
    train/test split is stratified and seeded. Returns the number of images written.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, test = train_test_split(index, test_size=test_fraction, stratify=digits.target, random_state=seed)
    for split, rows in (("train", train), ("test", test)):
        for i in rows:
            target = Path(folder) / split / str(digits.target[i]) / f"{i:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(target)
    return len(index)
