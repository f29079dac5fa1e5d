"""Codes by tap name, train/test splits and the checks that make a training set usable."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from sklearn.model_selection import train_test_split

from extract.codesfile import CodesFile, check_recipe, open_codes, read_meta
from extract.errors import UsageError

DEFAULT_TEST_FRACTION = 0.25


@dataclass
class Dataset:
    """A train/test split of labeled, valid codes, ready for scikit-learn."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    layers: list[str]
    recipe: dict
    codes_path: str
    test_path: str | None
    split_source: str
    n_failed_excluded: int
    n_unlabeled_excluded: int
    notes: list[str] = field(default_factory=list)


def file_meta(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """The attributes of a codes file and the names of its stored /codes datasets (no codes read)."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such codes file")
    try:
        with h5py.File(path, "r") as h5:
            return read_meta(h5), (list(h5["codes"].keys()) if "codes" in h5 else [])
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 codes file ({err})") from err


def file_taps(path: str | os.PathLike) -> list[str]:
    """Tap names of a codes file, in the order the recipe lists them."""
    meta, stored = file_meta(path)
    listed = [t["name"] for t in meta.get("taps", []) if t.get("name") in stored]
    return listed + [t for t in stored if t not in listed]


def concatenated_taps(layers: str | Sequence[str]) -> list[str]:
    """One concatenation of taps: ``"a+b"``, ``"a + b"`` or a list whose items may themselves be ``a+b``."""
    items = [layers] if isinstance(layers, str) else [str(t) for t in layers]
    return [t.strip() for item in items for t in item.split("+") if t.strip()]


def parse_layer_sets(spec: str | Sequence[str | Sequence[str]]) -> list[list[str]]:
    """The runs of ``compare``: commas separate runs, ``+`` concatenates taps, spaces are ignored.

    ``"block4, block4+penultimate"`` -> ``[["block4"], ["block4", "penultimate"]]``; a list holds one run per item.
    """
    items = [t for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    runs = [concatenated_taps(item) for item in items]
    if not runs or any(not run for run in runs):
        raise ValueError(f"layers {spec!r}: an empty entry; write runs separated by commas, taps joined by +")
    return runs


def resolve_layers(path: str | os.PathLike, layers: str | Sequence[str] | None) -> list[str]:
    """The requested taps, concatenated (``"a+b"``, or a list), default the file's first tap."""
    available = file_taps(path)
    if not available:
        raise ValueError(f"{path} holds no codes (no /codes datasets)")
    if layers is None:
        return available[:1]
    wanted = concatenated_taps(layers)
    unknown = [t for t in wanted if t not in available]
    if unknown or not wanted:
        raise ValueError(f"{path} has no layer {', '.join(unknown) or '(none given)'}; "
                         f"available layers: {', '.join(available)}")
    return wanted


def layer_recipe(recipe: dict, layers: Sequence[str]) -> dict:
    """The recipe restricted to ``layers``: the only taps a model depends on."""
    taps = {t["name"]: t for t in recipe.get("taps", [])}
    return {**recipe, "taps": [taps.get(name, {"name": name, "node": None, "pool": None}) for name in layers]}


def load(path: str | os.PathLike, layers: Sequence[str]) -> tuple[CodesFile, np.ndarray]:
    """Open a codes file and stack the codes of ``layers`` side by side (float32)."""
    try:
        cf = open_codes(path, layers)
    except KeyError as err:
        raise ValueError(err.args[0]) from err
    X = np.hstack([np.asarray(cf.codes[t], dtype=np.float32) for t in layers])
    return cf, X


def valid_rows(cf: CodesFile, X: np.ndarray) -> np.ndarray:
    """Mask of rows that are ok and labeled; ValueError if ok rows hold NaN/inf codes."""
    ok = cf.rows.ok.astype(bool)
    bad = ok & ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(f"{cf.path}: {int(bad.sum())} row(s) marked ok have NaN or infinite codes "
                         f"(first: {cf.rows.paths[np.flatnonzero(bad)[0]]}); re-extract them")
    return ok & (cf.rows.labels >= 0)


def class_names_of(cf: CodesFile) -> list[str]:
    """Class names in index order (index numbers as names if the file stores none)."""
    names = cf.class_names
    top = int(cf.rows.labels.max(initial=-1))
    return names + [str(i) for i in range(len(names), top + 1)]


def load_dataset(codes: str | os.PathLike, layers: str | Sequence[str] | None = None, test=None,
                 test_fraction: float | None = None, seed: int = 0) -> Dataset:
    """Load ``codes`` and split it: ``test`` file, else ``test_fraction``, else the split column.

    Classes missing from one side of the split are named in ``notes``.
    """
    data = _split_dataset(codes, layers, test, test_fraction, seed)
    data.notes += coverage_notes(data.y_train, data.y_test, data.class_names)
    return data


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


def _split_dataset(codes, layers, test, test_fraction, seed) -> Dataset:
    if test is not None and test_fraction is not None:
        raise ValueError("give either a test codes file or a test fraction, not both")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be between 0 and 1, got {test_fraction}")
    layers = resolve_layers(codes, layers)
    cf, X = load(codes, layers)
    names = class_names_of(cf)
    n_failed = int((~cf.rows.ok.astype(bool)).sum())
    use = valid_rows(cf, X)
    n_unlabeled = int((cf.rows.ok.astype(bool) & (cf.rows.labels < 0)).sum())
    if not (cf.rows.labels >= 0).any():
        raise ValueError(f"{codes} has no labels (every row is unlabeled, -1); it can be used for predicting, "
                         "not for training")
    if not use.any():
        raise ValueError(f"{codes} has no readable, labeled rows to train on ({n_failed} of {len(use)} images "
                         f"could not be read, {n_unlabeled} unlabeled); see `cnncodes info {codes}`")
    common = dict(class_names=names, layers=layers, recipe=cf.recipe, codes_path=str(codes),
                  n_unlabeled_excluded=n_unlabeled)
    y = cf.rows.labels
    if test is not None:
        X_test, y_test, n_failed_test, n_unl_test = _load_test_file(test, layers, cf.recipe, names,
                                                                    train=(cf, X, use))
        return Dataset(X[use], y[use], X_test, y_test, test_path=str(test),
                       split_source=f"test codes file {test}", n_failed_excluded=n_failed + n_failed_test,
                       **{**common, "n_unlabeled_excluded": n_unlabeled + n_unl_test})
    i_train, i_test, source, notes = split_rows(np.asarray(cf.rows.split).astype(str), use, y, names,
                                                test_fraction, seed)
    return Dataset(X[i_train], y[i_train], X[i_test], y[i_test], test_path=None, split_source=source,
                   notes=notes, n_failed_excluded=n_failed, **common)


def split_rows(split: np.ndarray, use: np.ndarray, y: np.ndarray, names: list[str], test_fraction: float | None,
               seed: int) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """Row numbers that train and that evaluate, where they came from, and notes.

    The split column when no fraction is given (train fits; test, else val, evaluates), else a stratified
    ``test_fraction`` (default 0.25 when the column has no usable train/held-out pair) of the usable rows.
    """
    train, notes = use & (split == "train"), []
    if test_fraction is None:
        for evaluate in ("test", "val"):
            held = use & (split == evaluate)
            if train.any() and held.any():
                unused = int((use & ~train & ~held).sum())
                if unused:
                    notes.append(f"{unused} row(s) in other splits were not used")
                return np.flatnonzero(train), np.flatnonzero(held), f"split column (train / {evaluate})", notes
        test_fraction = DEFAULT_TEST_FRACTION
        source = (f"stratified {test_fraction:g} test fraction (seed {seed}): the file has no usable "
                  "train/test split column and no test option was given")
        notes.append(source)
    else:
        source = f"stratified {test_fraction:g} test fraction (seed {seed})"
    idx = np.flatnonzero(use)
    _check_stratifiable(y[idx], names)
    i_train, i_test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y[idx])
    return i_train, i_test, source, notes


def _load_test_file(test, layers, recipe, names, train):
    """Codes of a second file, its recipe checked, its overlap with ``train`` (cf, X, rows used) refused and
    its class names mapped onto ``names``."""
    meta, _ = file_meta(test)
    check_recipe(layer_recipe(recipe, layers), layer_recipe(meta.get("recipe", {}), layers), f"test codes file {test}")
    tf, X = load(test, resolve_layers(test, layers))
    use = valid_rows(tf, X)
    test_names = class_names_of(tf)
    present = sorted({int(v) for v in tf.rows.labels[use]})
    unknown = [test_names[i] for i in present if test_names[i] not in names]
    if unknown:
        raise ValueError(f"test codes file {test} has classes the training file does not: {', '.join(unknown)}")
    mapping = np.array([names.index(n) if n in names else -1 for n in test_names], dtype=np.int64)
    y = mapping[tf.rows.labels[use]]
    n_failed = int((~tf.rows.ok.astype(bool)).sum())
    n_unlabeled = int((tf.rows.ok.astype(bool) & (tf.rows.labels < 0)).sum())
    if len(y) == 0:
        raise ValueError(f"test codes file {test} has no labeled, readable rows to evaluate on")
    refuse_overlap(*train, tf, X, use)
    return X[use], y, n_failed, n_unlabeled


def refuse_overlap(train_cf: CodesFile, X_train: np.ndarray, train_use: np.ndarray,
                   test_cf: CodesFile, X_test: np.ndarray, test_use: np.ndarray) -> None:
    """ValueError when test rows are training images: identical codes, or the same file (image root, path and
    size) with codes that agree to 1e-3 (the same image extracted on another device or precision)."""
    def where(cf: CodesFile, i: int) -> tuple:
        return (str(cf.meta.get("image_root")), cf.rows.paths[i], int(cf.rows.file_size[i]))

    train_rows = np.flatnonzero(train_use)
    by_hash = {hash(X_train[i].tobytes()): i for i in train_rows}  # hashes, not a copy of every row
    by_file = {where(train_cf, i): i for i in train_rows}
    shared = []
    for j in np.flatnonzero(test_use):
        i = by_hash.get(hash(X_test[j].tobytes()))
        if i is not None and not np.array_equal(X_train[i], X_test[j]):
            i = None
        if i is None and (k := by_file.get(where(test_cf, j))) is not None:
            i = k if np.allclose(X_train[k], X_test[j], rtol=1e-3, atol=1e-3) else None
        if i is not None:
            shared.append((i, j))
    if shared:
        i, j = shared[0]
        raise ValueError(
            f"test codes file {test_cf.path} holds {len(shared)} of the {len(train_rows)} training images of "
            f"{train_cf.path} (first: {test_cf.rows.paths[j]} = {train_cf.rows.paths[i]}, same codes); evaluating "
            "on training images overstates accuracy: remove them from one of the two image sets")


def _check_stratifiable(y: np.ndarray, names: list[str]) -> None:
    counts = np.bincount(y, minlength=len(names))
    single = [names[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise ValueError(f"class {', '.join(map(repr, single))} has a single example; a stratified test split "
                         "needs at least 2 per class")


def require_two_classes(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """A classifier (or a fine-tune) needs labeled images of at least two classes in ``where``; -1 is unlabeled."""
    present = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
    if len(present) < 2:
        only = class_names[present[0]] if len(present) else "none"
        raise UsageError(f"{where} holds only one class ({only}); a classifier needs at least two")


def check_training_set(y_train: np.ndarray, class_names: list[str], cv: int) -> tuple[int, list[str]]:
    """Raise on unusable training labels or ``cv`` (0, or at least 2); return the CV folds to use, and notes."""
    if not (cv == 0 or cv >= 2):
        raise ValueError(f"cv must be 0 (no cross-validation) or at least 2 folds, got {cv}")
    require_two_classes(y_train, class_names, "the training split")
    counts = np.bincount(y_train, minlength=len(class_names))
    present = np.flatnonzero(counts)
    if cv == 0:
        return 0, ["no cross-validation (cv=0): the hyper-parameter is the one given (C), else the "
                   "classifier's default, and no CV score is computed"]
    single = [class_names[c] for c in present if counts[c] == 1]
    if single:
        raise ValueError(f"class {', '.join(map(repr, single))} has a single training example; "
                         f"cross-validation needs at least 2 per class (add images, or pass cv=0 with a fixed C)")
    smallest = int(counts[present].min())
    if smallest < cv:
        who = class_names[present[np.argmin(counts[present])]]
        note = (f"cross-validation reduced from {cv} to {smallest} folds: class {who!r} has only "
                f"{smallest} training examples")
        warnings.warn(note, stacklevel=3)
        return smallest, [note]
    return cv, []
