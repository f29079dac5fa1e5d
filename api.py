"""The Python API's functions; ``cnncodes/__init__`` exposes them (see its docstring)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import h5py
import numpy as np

from . import __version__  # noqa: F401

__all__ = ["extract_codes", "load_codes", "Codes", "train", "compare", "finetune", "advise", "auto", "load_model",
           "predict", "CodesTransformer", "export", "__version__"]

PathLike = str | os.PathLike
# Command-line names whose library keyword differs: name -> (keyword, value from the command line's value)
CLI_NAMES = {"quiet": ("progress", lambda v: not v), "no_augment": ("augment", lambda v: not v),
             "layer": ("layers", lambda v: v), "model": ("backbone", lambda v: v), "try": ("try_options", bool)}


def _keywords(options: dict) -> dict:
    """``options`` with the command line's names (``quiet=True``, ``layer=``...) as the library's keywords."""
    out = dict(options)
    for name, (keyword, convert) in CLI_NAMES.items():
        if name in out:
            if keyword in out:
                raise TypeError(f"give {name} or {keyword}, not both")
            out[keyword] = convert(out.pop(name))
    return out


def extract_codes(source: PathLike | Sequence[PathLike], out: PathLike, **options):
    """Run the backbone over images and write a codes file (``extract.extract_codes``).

    ``source``: a folder tree, a CSV manifest, an image file or a list of image files and folders.
    ``options``: backbone, layers, pool, weights, resize, crop, views, device, precision, batch_size,
    workers, dtype, overwrite, update, progress, path_column, label_column, split_column... as on the
    command line; checked before torch loads. Returns an ExtractResult.
    """
    from cnncodes.extract.names import tap_names
    from cnncodes.extract.options import check_options

    options = _keywords(options)
    if options.get("layers") is not None:  # "a,b", "a+b" or a list, as --layer: the taps to extract
        options["layers"] = tap_names(options["layers"])
    check_options(options)  # before torch loads
    from cnncodes.extract import extract_codes as _extract

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

    ``split`` keeps the rows of one split ("train", "val", "test"; a split the file lacks is an error
    naming those it has); rows whose image failed
    (NaN codes) are left out unless ``include_failed``. Uses h5py only (no torch, no scikit-learn).
    """
    from cnncodes.extract.errors import UsageError
    from cnncodes.extract.names import concatenated_taps

    with h5py.File(path, "r") as h5:
        if "codes" not in h5:
            raise UsageError(f"{path} is not a cnncodes codes file (no /codes group)")
        available = list(h5["codes"].keys())
        taps = [t["name"] for t in json.loads(h5.attrs.get("taps", "[]")) if t["name"] in available] or available
        wanted = taps[:1] if layers is None else concatenated_taps(layers)
        missing = [t for t in wanted if t not in available]
        if missing:
            raise UsageError(f"{path} has no {', '.join(missing)}; it has {', '.join(available)}")
        keep = np.ones(len(h5["labels"]), bool) if include_failed else h5["ok"][()].astype(bool)
        if split is not None:
            in_split = h5["split"].asstr()[()] == split
            if not in_split.any():  # the split rule's error (scikit-learn is loaded only on this path)
                from cnncodes.classify.split import missing_split_error
                raise missing_split_error(path, h5["split"].asstr()[()], split)
            keep &= in_split
        X = np.hstack([h5["codes"][t][()][keep].astype(np.float32, copy=False) for t in wanted])
        return Codes(X, h5["labels"][()][keep], list(json.loads(h5.attrs.get("class_names", "[]"))),
                     h5["paths"].asstr()[()][keep].tolist())


def train(codes: PathLike, out_dir: PathLike, **options) -> dict:
    """Train one classifier on a codes file and write its model and reports (``classify.classify_codes``).

    ``options``: layers, classifier, normalize, C, cv, class_weight, sampling, test, test_fraction,
    seed, calibrate, max_iter, positive, overwrite, progress. Returns the report (as report.json).
    """
    from cnncodes.classify import classify_codes

    return classify_codes(codes, out_dir, **_keywords(options))


def compare(codes: PathLike, out_dir: PathLike, **options) -> list[dict]:
    """Every classifier on every layer, ranked by cross-validation on the training split (``classify.compare``)."""
    from cnncodes.classify import compare as _compare

    return _compare(codes, out_dir, **_keywords(options))


def finetune(images: PathLike, out_dir: PathLike, **options) -> dict:
    """Fine-tune a backbone with a new head on images (``finetune.finetune_images``); returns the report.

    ``options``: backbone, weights, freeze, freeze_until, epochs, lr, batch_size, optimizer, sampling,
    val_fraction, test_fraction, seed, device, quiet... as on the command line; checked before torch loads.
    """
    from cnncodes.finetune.options import check_options

    options = _keywords(options)
    check_options(options)
    from cnncodes.finetune import finetune_images

    return finetune_images(images, out_dir, **options)


def advise(images: PathLike, **options) -> dict:
    """Which transfer-learning scenario (1-4) fits ``images``, with the evidence and the commands to run
    (``advise.advise_images``). ``options``: backbone, weights, sample, seed, try, resize, crop, device, quiet...;
    checked before torch loads."""
    from cnncodes.advise.options import check_options

    options = _keywords(options)
    check_options(options)  # before torch loads
    from cnncodes.advise import advise_images

    return advise_images(images, **options)


def auto(images: PathLike, out_dir: PathLike, **options) -> dict:
    """Advise, score the plausible candidates within a time budget on training data only, refit the winner into
    ``out_dir``/winner and evaluate it once (``advise.auto.auto_images``). ``options``: budget ("15m"),
    candidates, epochs, backbone, weights, resize, crop, seed, quiet, overwrite... Returns auto.json's dict."""
    from cnncodes.advise.auto import auto_images

    return auto_images(images, out_dir, **_keywords(options))


def load_model(run_dir: PathLike) -> dict:
    """The model of a run folder (``classify`` or ``finetune``): ``bundle["kind"]`` is "codes" or "finetuned",
    ``bundle["class_names"]`` the class names. A codes model (checksum verified) has ``bundle["pipeline"]``,
    the fitted scikit-learn pipeline, and ``bundle["layers"]``, its taps; a fine-tuned run has
    ``bundle["network"]``, the torch module in eval mode."""
    from cnncodes.classify.runs import load_run_model

    return load_run_model(run_dir)


def predict(run_dir: PathLike, source: PathLike | Sequence[PathLike], out_csv: PathLike, **options) -> dict:
    """Predict a codes file, an image folder, image files...; writes ``out_csv`` and returns a summary.

    ``run_dir`` is a ``classify`` run (images are extracted with exactly the model's recipe first) or a
    ``finetune`` run (the network predicts the images). ``options``: threshold, positive, codes_out,
    weights, device, precision, batch_size, workers, quiet, path_column, label_column, split_column,
    overwrite (replace an existing ``out_csv``; never a file of ``run_dir``).
    """
    from cnncodes.classify.runs import predict_run

    return predict_run(run_dir, source, out_csv, **_keywords(options))


def export(codes: PathLike, out: PathLike, to: str = "npy", **options) -> Path:
    """Write a codes file as npy + parquet (``to="npy"``, a folder) or one parquet table; ``options``:
    ok_only, overwrite. Returns ``out``."""
    from cnncodes.extract.export import export_codes

    return export_codes(codes, out, to=to, **options)


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
            from cnncodes.extract.errors import UsageError

            paths = [Path(p).resolve() for p in (X.tolist() if isinstance(X, np.ndarray) else X)]
            if not paths:
                raise UsageError("CodesTransformer.transform needs at least one image path")
            from cnncodes.extract.names import concatenated_taps

            layers = concatenated_taps(self.layer)
            with tempfile.TemporaryDirectory(prefix="cnncodes-transform-") as tmp:
                out = Path(tmp) / "codes.h5"
                result = extract_codes([str(p) for p in paths], out, backbone=self.backbone, layers=tuple(layers),
                                       pool=self.pool, weights=self.weights, resize=self.resize, crop=self.crop,
                                       device=self.device, precision=self.precision, batch_size=self.batch_size,
                                       workers=self.workers, progress=self.progress, views=self.views)
                if result.failures:
                    shown = "; ".join(f"{p}: {why}" for p, why in result.failures[:5])
                    raise UsageError(f"{len(result.failures)} image(s) could not be read: {shown}")
                with h5py.File(out, "r") as h5:
                    root = Path(h5.attrs["image_root"])
                codes = load_codes(out, layers)
            row = {p: i for i, p in enumerate(codes.paths)}
            # list_images roots several paths at their common folder (one path: the file's own folder)
            return codes.X[[row[p.relative_to(root).as_posix()] for p in paths]]

    CodesTransformer.__module__, CodesTransformer.__qualname__ = __name__, "CodesTransformer"  # picklable
    return CodesTransformer
