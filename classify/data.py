"""Reading codes files (metadata, taps, rows, codes in blocks) and the checks that make a training set usable.

The lowest layer of classify: the split rule (classify.split) and cross-validation (classify.cv) build on it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from cnncodes.extract.codesfile import CodesFile, Rows, open_codes, read_meta, read_rows
from cnncodes.extract.errors import UsageError
from cnncodes.extract.names import concatenated_taps

BLOCK_BYTES = 64 * 2 ** 20  # codes read at a time by the overlap check (the streamed path passes its budget)


def file_meta(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """The attributes of a codes file and the names of its stored /codes datasets (no codes read)."""
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such codes file")
    try:
        with h5py.File(path, "r") as h5:
            return read_meta(h5), (list(h5["codes"].keys()) if "codes" in h5 else [])
    except OSError as err:
        raise UsageError(f"{path} is not a readable HDF5 codes file ({err})") from err


def file_taps(path: str | os.PathLike) -> list[str]:
    """Tap names of a codes file, in the order the recipe lists them."""
    meta, stored = file_meta(path)
    listed = [t["name"] for t in meta.get("taps", []) if t.get("name") in stored]
    return listed + [t for t in stored if t not in listed]


def resolve_layers(path: str | os.PathLike, layers: str | Sequence[str] | None) -> list[str]:
    """The requested taps, concatenated (``"a+b"``, or a list), default the file's first tap."""
    available = file_taps(path)
    if not available:
        raise UsageError(f"{path} holds no codes (no /codes datasets)")
    if layers is None:
        return available[:1]
    wanted = concatenated_taps(layers)
    unknown = [t for t in wanted if t not in available]
    if unknown or not wanted:
        raise UsageError(f"{path} has no layer {', '.join(unknown) or '(none given)'}; "
                         f"available layers: {', '.join(available)}")
    return wanted


def codes_shape(path: str | os.PathLike, layers: Sequence[str]) -> tuple[int, int]:
    """(rows, summed code dimension) of ``layers``, from the dataset shapes alone (no codes read)."""
    with h5py.File(path, "r") as h5:
        shapes = [h5["codes"][t].shape for t in layers]
    return shapes[0][0], sum(s[1] for s in shapes)


def layer_recipe(recipe: dict, layers: Sequence[str]) -> dict:
    """The recipe restricted to ``layers``: the only taps a model depends on."""
    taps = {t["name"]: t for t in recipe.get("taps", [])}
    return {**recipe, "taps": [taps.get(name, {"name": name, "node": None, "pool": None}) for name in layers]}


def load(path: str | os.PathLike, layers: Sequence[str]) -> tuple[CodesFile, np.ndarray]:
    """Open a codes file and stack the codes of ``layers`` side by side (float32)."""
    cf = open_codes(path, layers)
    X = np.hstack([np.asarray(cf.codes[t], dtype=np.float32) for t in layers])
    return cf, X


def valid_rows(cf: CodesFile, X: np.ndarray) -> np.ndarray:
    """Mask of rows that are ok and labeled; ValueError if ok rows hold NaN/inf codes."""
    ok = cf.rows.ok.astype(bool)
    bad = ok & ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise UsageError(f"{cf.path}: {int(bad.sum())} row(s) marked ok have NaN or infinite codes "
                         f"(first: {cf.rows.paths[np.flatnonzero(bad)[0]]}); re-extract them")
    return ok & (cf.rows.labels >= 0)


def class_names_of(cf: CodesFile) -> list[str]:
    """Class names in index order (index numbers as names if the file stores none)."""
    names = cf.class_names
    top = int(cf.rows.labels.max(initial=-1))
    return names + [str(i) for i in range(len(names), top + 1)]


@dataclass
class _Named:  # what class_names_of needs
    meta: dict
    rows: object

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))


def meta_rows(path) -> tuple[dict, Rows]:
    """The attributes and row columns of a complete codes file (no codes read)."""
    file_meta(path)  # readable errors for a missing or non-HDF5 file
    with h5py.File(path, "r") as h5:
        meta = read_meta(h5)
        if not meta.get("complete", False):
            raise UsageError(f"{path} is incomplete (an extraction was interrupted); rerun the extract command")
        return meta, read_rows(h5)


def row_blocks(path, layers: Sequence[str], index: np.ndarray,
               block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in the sorted row numbers ``index``, their float32 codes), about ``block_bytes`` at a time."""
    with h5py.File(path, "r") as h5:
        datasets = [h5["codes"][t] for t in layers]
        step = max(1, block_bytes // (4 * sum(d.shape[1] for d in datasets)))
        for start in range(0, datasets[0].shape[0], step):
            lo, hi = np.searchsorted(index, [start, start + step])
            if hi > lo:
                block = np.hstack([d[start:start + step] for d in datasets], dtype=np.float32)
                yield np.arange(lo, hi), block[index[lo:hi] - start]


def coverage_notes(y_train: np.ndarray, y_test: np.ndarray, names: list[str]) -> list[str]:
    """Notes for classes with no training rows (never predicted) or no held-out rows (recall unmeasured)."""
    train, test = set(np.unique(y_train).tolist()), set(np.unique(y_test).tolist())
    notes = []
    if test - train:
        notes.append(f"class {', '.join(names[c] for c in sorted(test - train))} has no training rows (only "
                     "held-out ones): the classifier cannot predict it, so its recall is 0")
    if train - test:
        notes.append(f"class {', '.join(names[c] for c in sorted(train - test))} has no held-out rows: its "
                     "recall is not measured (its false positives still count against its precision)")
    return notes


def require_two_classes(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """A classifier (or a fine-tune) needs labeled images of at least two classes in ``where``; -1 is unlabeled."""
    present = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
    if len(present) < 2:
        only = class_names[present[0]] if len(present) else "none"
        raise UsageError(f"{where} holds only one class ({only}); a classifier needs at least two")


def check_finite(X: np.ndarray, rows: np.ndarray, paths: np.ndarray, path) -> None:
    """ValueError naming the first of ``rows`` (read from ``path``) whose codes hold NaN or inf."""
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise UsageError(f"{path}: row(s) marked ok have NaN or infinite codes (first: {paths[rows[bad][0]]}); "
                         "re-extract them")
