"""``--precision int8``: the tap model quantized after training by NNCF, calibrated on the user's own images.

NNCF sets each quantized layer's int8 range from the activations of a calibration sample: up to
``CALIBRATION_SIZE`` images spread evenly over the listing's training rows (rows of no evaluation split;
all rows where every row is one), decoded as extraction decodes them. The codes depend on that sample, so
its digest (paths, sizes, mtimes) goes into the recipe and into the key of the quantized model, cached
beside the fp32 one. A run that must reproduce codes made earlier (predict) takes the digest its recipe
recorded, and then needs that quantized model from the cache. nncf is an optional dependency
(``cnncodes[int8]``); torch-free where only ``available`` and the sample's rows are needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
from dataclasses import dataclass

import numpy as np

from .errors import ExtractionError

CALIBRATION_SIZE = 300  # NNCF's own default subset size
EVALUATION_SPLITS = ("val", "test")  # never used to choose anything, here the int8 ranges
NEEDS_NNCF = "--precision int8 needs nncf: pip install 'cnncodes[int8]'"


def available() -> bool:
    """Whether nncf is installed (found without importing it)."""
    return importlib.util.find_spec("nncf") is not None


@dataclass(frozen=True)
class Calibration:
    """The calibration sample of a listing: its rows and their digest (what the quantized model depends on)."""

    listing: object | None  # reader.ImageList; None: a sample recorded by an earlier run (calibration_for)
    rows: tuple[int, ...]
    digest: str

    def images(self, prep: dict) -> np.ndarray:
        """The sample decoded as extraction decodes it (uint8 [n, 3, crop, crop]); unreadable images left out."""
        from .images import ImageDataset

        if self.listing is None:
            raise ExtractionError(f"the int8 model these codes were made with (calibration sample {self.digest}) "
                                  "is no longer in the converted-model cache: extract the training images again "
                                  "with --precision int8 and retrain")
        data = ImageDataset(self.listing.root, [self.listing.paths[i] for i in self.rows], prep["resize"],
                            prep["crop"], prep["interpolation"])
        decoded = [image.numpy() for image, ok, _ in (data[i] for i in range(len(data))) if ok]
        if not decoded:
            raise ValueError("--precision int8: none of the calibration images could be decoded")
        return np.stack(decoded)


def calibration(listing, size: int = CALIBRATION_SIZE) -> Calibration:
    """Up to ``size`` rows spread evenly over the training rows of ``listing`` (all rows where none is one)."""
    train = [i for i, split in enumerate(listing.splits) if split not in EVALUATION_SPLITS]
    pool = train or list(range(len(listing)))
    rows = tuple(dict.fromkeys(pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(size, len(pool)))))
    files = [[listing.paths[i], int(listing.file_size[i]), int(listing.file_mtime_ns[i])] for i in rows]
    return Calibration(listing, rows, hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16])


def model_key(fp32_key: str | None, sample: Calibration) -> str | None:
    """The cache key of the int8 model: the fp32 model's (network, weights, taps, input, code versions), the
    sample's digest and nncf's version; None where the fp32 model is not cached either."""
    if fp32_key is None:
        return None
    from importlib import metadata

    return hashlib.sha256(f"{fp32_key} {sample.digest} {metadata.version('nncf')}".encode()).hexdigest()[:32]


def calibration_for(listing, recipe: dict | None = None) -> Calibration:
    """``listing``'s sample; where ``recipe`` (a trained model's) recorded one, that one, so that new images
    get their codes from the same int8 model as the training images."""
    if recipe and recipe.get("calibration"):
        return Calibration(None, (), recipe["calibration"])
    return calibration(listing)


def quantize(model, images: np.ndarray):
    """``model`` (an fp32 ``openvino.Model`` taking uint8 images) quantized to int8 by NNCF, its ranges
    calibrated on ``images``."""
    import nncf

    from . import openvino_model

    openvino_model.ov()  # imported without its telemetry
    sample = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        return nncf.quantize(model, sample, subset_size=len(images))
