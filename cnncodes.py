"""cnncodes as a Python library: extract CNN codes, read them as numpy, train, compare, predict.

A thin facade over the ``extract`` and ``classify`` packages. Importing it loads neither torch nor
scikit-learn: each function imports what it needs when it is called, so ``load_codes`` (h5py and
numpy only) is as quick in a notebook as it is from the command line::

    import cnncodes

    cnncodes.extract_codes("data/digits", "digits.h5", layers=["block4", "penultimate"])
    codes = cnncodes.load_codes("digits.h5", layers="block4", split="train")   # codes.X, codes.y, ...
    report = cnncodes.train("digits.h5", "runs/svm", layers="block4", classifier="svm")
    result = cnncodes.predict("runs/svm", "data/digits/test", "preds.csv")

``CodesTransformer`` turns a list of image paths into codes inside a scikit-learn ``Pipeline``.
"""
from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple, Sequence

import h5py
import numpy as np

try:
    __version__ = version("cnncodes")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0"

__all__ = ["extract_codes", "load_codes", "Codes", "train", "compare", "load_model", "predict", "CodesTransformer",
           "__version__"]

PathLike = str | os.PathLike


def extract_codes(source: PathLike | Sequence[PathLike], out: PathLike, **options):
    """Run the backbone over images and write a codes file (``extract.extract_codes``).

    ``source``: a folder tree, a CSV manifest, an image file or a list of image files and folders.
    ``options``: backbone, layers, pool, weights, resize, crop, views, device, precision, batch_size,
    workers, dtype, overwrite, update, progress... as on the command line. Returns an ExtractResult.
    """
    from extract import extract_codes as _extract

    return _extract(source, out, **options)


class Codes(NamedTuple):
    """Codes of one codes file as numpy: ``X [n, d]`` float32, ``y [n]`` (-1 unlabeled), names, paths."""

    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    paths: list[str]


def load_codes(path: PathLike, layers: str | Sequence[str] | None = None, split: str | None = None,
               include_failed: bool = False) -> Codes:
    """Read the codes of ``layers`` (``"a+b"`` or a list: side by side; default the first tap) as numpy.

    ``split`` keeps the rows of one split ("train", "val", "test"); rows whose image failed
    (NaN codes) are left out unless ``include_failed``. Uses h5py only (no torch, no scikit-learn).
    """
    with h5py.File(path, "r") as h5:
        if "codes" not in h5:
            raise ValueError(f"{path} is not a cnncodes codes file (no /codes group)")
        available = list(h5["codes"].keys())
        taps = [t["name"] for t in json.loads(h5.attrs.get("taps", "[]")) if t["name"] in available] or available
        wanted = taps[:1] if layers is None else (layers.split("+") if isinstance(layers, str) else list(layers))
        missing = [t for t in wanted if t not in available]
        if missing:
            raise ValueError(f"{path} has no {', '.join(missing)}; it has {', '.join(available)}")
        keep = np.ones(len(h5["labels"]), bool) if include_failed else h5["ok"][()].astype(bool)
        if split is not None:
            keep &= h5["split"].asstr()[()] == split
        X = np.hstack([h5["codes"][t][()][keep].astype(np.float32, copy=False) for t in wanted])
        return Codes(X, h5["labels"][()][keep], list(json.loads(h5.attrs.get("class_names", "[]"))),
                     h5["paths"].asstr()[()][keep].tolist())


def train(codes: PathLike, out_dir: PathLike, **options) -> dict:
    """Train one classifier on a codes file and write its model and reports (``classify.classify_codes``).

    ``options``: layers, classifier, normalize, C, cv, class_weight, sampling, test, test_fraction,
    seed, calibrate, max_iter, positive, overwrite, progress. Returns the report (as report.json).
    """
    from classify import classify_codes

    return classify_codes(codes, out_dir, **options)


def compare(codes: PathLike, out_dir: PathLike, **options) -> list[dict]:
    """Every classifier on every layer, ranked by cross-validation on the training split (``classify.compare``)."""
    from classify import compare as _compare

    return _compare(codes, out_dir, **options)


def load_model(run_dir: PathLike) -> dict:
    """The trained model of a run folder, its checksum verified: ``bundle["pipeline"]`` is the fitted
    scikit-learn pipeline, ``bundle["class_names"]`` its class names, ``bundle["layers"]`` its taps."""
    from classify import load_model as _load

    return _load(run_dir)


def predict(run_dir: PathLike, source: PathLike | Sequence[PathLike], out_csv: PathLike, **options) -> dict:
    """Predict a codes file, an image folder, image files...; writes ``out_csv`` and returns a summary.

    Images are extracted with exactly the model's recipe first. ``options``: threshold, positive,
    codes_out, weights, device, precision, batch_size, workers, progress.
    """
    from classify.predict import predict_images

    return predict_images(run_dir, source, out_csv, **options)


def __getattr__(name: str):
    """``CodesTransformer`` is built on first use, so that ``import cnncodes`` does not load scikit-learn."""
    if name == "CodesTransformer":
        globals()[name] = cls = _codes_transformer_class()
        return cls
    raise AttributeError(f"module 'cnncodes' has no attribute {name!r}")


def _codes_transformer_class() -> type:
    from sklearn.base import BaseEstimator, TransformerMixin

    class CodesTransformer(TransformerMixin, BaseEstimator):
        """Image paths -> CNN codes, as a scikit-learn transformer (the network is frozen: ``fit`` learns nothing).

        ``transform(paths)`` extracts the codes of ``layer`` (``"a+b"`` concatenates taps) into a
        temporary codes file and returns them as a float32 array in the order of ``paths``. An image
        that cannot be read raises ValueError naming it. The run options are explicit parameters (not
        ``**kwargs``) so that ``get_params`` / ``clone`` / grid searches work as for any estimator.
        """

        def __init__(self, backbone: str = "mobilenet_v2", layer: str = "penultimate", pool: str = "avg",
                     weights: str | None = None, resize: int | None = None, crop: int | None = None,
                     device: str = "auto", precision: str = "auto", batch_size: int | None = None,
                     workers: int | None = None, progress: bool = False, views: int = 1):
            self.backbone, self.layer, self.pool, self.weights = backbone, layer, pool, weights
            self.resize, self.crop, self.device, self.precision = resize, crop, device, precision
            self.batch_size, self.workers, self.progress, self.views = batch_size, workers, progress, views

        def fit(self, X, y=None):
            return self

        def transform(self, X) -> np.ndarray:
            paths = [Path(p).resolve() for p in (X.tolist() if isinstance(X, np.ndarray) else X)]
            if not paths:
                raise ValueError("CodesTransformer.transform needs at least one image path")
            layers = self.layer.split("+")
            with tempfile.TemporaryDirectory(prefix="cnncodes-transform-") as tmp:
                out = Path(tmp) / "codes.h5"
                result = extract_codes([str(p) for p in paths], out, backbone=self.backbone, layers=tuple(layers),
                                       pool=self.pool, weights=self.weights, resize=self.resize, crop=self.crop,
                                       device=self.device, precision=self.precision, batch_size=self.batch_size,
                                       workers=self.workers, progress=self.progress, views=self.views)
                if result.failures:
                    shown = "; ".join(f"{p}: {why}" for p, why in result.failures[:5])
                    raise ValueError(f"{len(result.failures)} image(s) could not be read: {shown}")
                with h5py.File(out, "r") as h5:
                    root = Path(h5.attrs["image_root"])
                codes = load_codes(out, layers)
            row = {p: i for i, p in enumerate(codes.paths)}
            # list_images roots several paths at their common folder (one path: the file's own folder)
            return codes.X[[row[p.relative_to(root).as_posix()] for p in paths]]

    CodesTransformer.__module__, CodesTransformer.__qualname__ = __name__, "CodesTransformer"  # picklable
    return CodesTransformer
