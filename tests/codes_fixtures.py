"""Write small but real HDF5 codes files for tests, following the contract in extract/codesfile.py."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
from sklearn.datasets import make_classification

from cnncodes.extract.codesfile import Rows, create_codes_dataset, write_attrs, write_rows

PREPROCESS = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "interpolation": "bilinear"}


def recipe(taps: Mapping[str, int], preprocess: Mapping | None = None, backbone: str = "mobilenet_v2",
           sha: str = "b0353104" + "0" * 56) -> dict:
    """A recipe dict as the extract stage writes it (taps in the given order)."""
    return {"backbone": backbone, "weights_sha256": sha,
            "taps": [{"name": name, "node": f"node.{name}", "pool": "avg", "dim": dim} for name, dim in taps.items()],
            "preprocess": dict(preprocess or PREPROCESS)}


def write_codes_file(path, codes: Mapping[str, np.ndarray], labels: Sequence[int], class_names: Sequence[str],
                     split: Sequence[str] | None = None, ok: Sequence[bool] | None = None,
                     errors: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                     rec: Mapping | None = None, dtype: str = "float32") -> Path:
    """Write a complete codes file; failed rows (ok False) get NaN codes as the extractor writes them."""
    path = Path(path)
    n = len(labels)
    ok = np.ones(n, bool) if ok is None else np.asarray(ok, bool)
    rows = Rows(labels=np.asarray(labels, np.int64),
                paths=np.array(paths if paths is not None else [f"img/{i:05d}.png" for i in range(n)], dtype=object),
                split=np.array(split if split is not None else [""] * n, dtype=object),
                ok=ok,
                errors=np.array(errors if errors is not None else ["" if k else "cannot identify image file" for k in ok],
                                dtype=object),
                file_size=np.full(n, 1234, np.int64), file_mtime_ns=np.arange(n, dtype=np.int64))
    rec = copy.deepcopy(dict(rec)) if rec is not None else recipe({t: c.shape[1] for t, c in codes.items()})
    meta = {"recipe": rec, "backbone": rec["backbone"],
            "weights": {"name": "mobilenet_v2-b0353104.pth", "sha256": rec["weights_sha256"]},
            "taps": rec["taps"], "preprocess": rec["preprocess"], "class_names": list(class_names),
            "image_root": "/data/images", "versions": {"torch": "2.x", "torchvision": "0.x"},
            "precision": dtype, "dtype": dtype, "complete": True}
    with h5py.File(path, "w") as h5:
        write_attrs(h5, meta)
        write_rows(h5, rows)
        for tap, values in codes.items():
            values = np.array(values, dtype=dtype)
            values[~ok] = np.nan
            create_codes_dataset(h5, tap, n, values.shape[1], dtype)[...] = values
    return path


def imbalanced_codes(n_per_class: Sequence[int] = (60, 30, 12), n_features: int = 24, seed: int = 0,
                     sep: float = 1.5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two non-negative taps ("block4" 24-D, "penultimate" 16-D) of separable, imbalanced classes."""
    n = int(sum(n_per_class))
    weights = [c / n for c in n_per_class]
    X, y = make_classification(n_samples=n, n_features=n_features + 16, n_informative=12, n_redundant=4,
                               n_classes=len(n_per_class), n_clusters_per_class=1, weights=weights,
                               class_sep=sep, flip_y=0, random_state=seed)
    X = np.maximum(X, 0)  # ReLU'd, like real CNN codes
    return {"block4": X[:, :n_features], "penultimate": X[:, n_features:]}, y


def split_column(y: np.ndarray, test_share: float = 0.3, seed: int = 0, val: bool = False) -> list[str]:
    """A per-class split column: about ``test_share`` of each class in "test" (or "val")."""
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * len(y), dtype=object)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        split[idx[: max(1, int(round(test_share * len(idx))))]] = "val" if val else "test"
    return list(split)


def make_codes(path, n_per_class=(60, 30, 12), class_names=("cat", "dog", "bird"), with_split=True,
               seed: int = 0, **kwargs) -> Path:
    """The usual test file: imbalanced classes, two taps, a train/test split column."""
    codes, y = imbalanced_codes(n_per_class, seed=seed)
    split = split_column(y, seed=seed) if with_split else None
    return write_codes_file(path, codes, y, class_names, split=split, **kwargs)


def binary_codes(folder, name: str = "train.h5", n=(40, 20)) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    """A two-class ("no", "yes") file of overlapping classes with a split column; its path, codes and labels."""
    codes, y = imbalanced_codes(n, sep=0.8)
    return write_codes_file(Path(folder) / name, codes, y, ["no", "yes"], split=split_column(y)), codes, y
