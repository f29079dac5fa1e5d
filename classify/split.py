"""The one split rule of every trainer (plan_split: which rows train, which evaluate), the overlap refusal
for a separate test file, and load_dataset, which loads the planned rows into memory.

Apart from classify.data (reading codes) so that the rule reads in one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import h5py
import numpy as np
from sklearn.model_selection import train_test_split

from cnncodes.extract.codesfile import check_recipe
from cnncodes.extract.errors import UsageError

from .data import (BLOCK_BYTES, _Named, class_names_of, codes_shape, coverage_notes, file_meta, layer_recipe, load,
                   meta_rows, resolve_layers, row_blocks, valid_rows)

DEFAULT_TEST_FRACTION = 0.25
EVALUATION_SPLITS = ("test", "val")  # the first present beside train evaluates; it never chooses anything


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


def load_dataset(codes: str | os.PathLike, layers: str | Sequence[str] | None = None, test=None,
                 test_fraction: float | None = None, seed: int = 0) -> Dataset:
    """Load the codes of the rows ``plan_split`` chooses (``test`` file, else ``test_fraction``, else the
    split column) into memory."""
    layers = resolve_layers(codes, layers)
    plan = plan_split(codes, layers, test, test_fraction, seed)
    cf, X = load(codes, layers)
    valid_rows(cf, X)
    X_test = X
    if test is not None:
        tf, X_test = load(test, plan.test_layers)
        valid_rows(tf, X_test)
    return Dataset(X[plan.train], plan.y_train, X_test[plan.test], plan.y_test, plan.class_names, layers,
                   plan.recipe, plan.codes_path, plan.test_codes, plan.split_source, plan.n_failed_excluded,
                   plan.n_unlabeled_excluded, notes=list(plan.notes))


@dataclass
class Plan:
    """Which rows train and which evaluate, as sorted row numbers (the test rows may be in another file)."""

    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray
    test_path: str
    test_layers: list[str]
    class_names: list[str]
    recipe: dict
    split_source: str
    n_failed_excluded: int
    n_unlabeled_excluded: int
    paths: np.ndarray
    test_paths: np.ndarray
    codes_path: str
    test_codes: str | None = None
    notes: list[str] = field(default_factory=list)


def plan_split(codes, layers: list[str], test=None, test_fraction: float | None = None, seed: int = 0,
               block_bytes: int = BLOCK_BYTES) -> Plan:
    """The one split rule of every trainer, in memory or streamed, chosen from the row columns: a ``test``
    file (every usable row of ``codes`` trains; test rows that are training images are refused), else
    ``test_fraction``, else the split column (see ``split_rows``). Codes are read only to refuse overlap,
    ``block_bytes`` at a time."""
    if test is not None and test_fraction is not None:
        raise UsageError("give either a test codes file or a test fraction, not both")
    meta, rows = meta_rows(codes)
    names = class_names_of(_Named(meta, rows))
    ok, y = rows.ok.astype(bool), rows.labels
    use = ok & (y >= 0)
    if not (y >= 0).any():
        raise UsageError(f"{codes} has no labels (every row is unlabeled, -1); it can be used for predicting, "
                         "not for training")
    if not use.any():
        raise UsageError(f"{codes} has no readable, labeled rows to train on ({int((~ok).sum())} of {len(use)} "
                         f"images could not be read, {int((ok & (y < 0)).sum())} unlabeled); see "
                         f"`cnncodes info {codes}`")
    common = dict(class_names=names, recipe=dict(meta.get("recipe", {})), paths=rows.paths, codes_path=str(codes),
                  n_failed_excluded=int((~ok).sum()), n_unlabeled_excluded=int((ok & (y < 0)).sum()))
    if test is not None:
        plan = _with_test_file(codes, test, layers, use, y, common)
        refuse_overlap(plan, layers, meta, block_bytes)
    else:
        i_train, i_test, source, notes = split_rows(np.asarray(rows.split).astype(str), use, y, names,
                                                    test_fraction, seed)
        i_train, i_test = np.sort(i_train), np.sort(i_test)
        plan = Plan(i_train, y[i_train], i_test, y[i_test], str(codes), layers, test_paths=rows.paths,
                    split_source=source, notes=notes, **common)
    plan.notes += coverage_notes(plan.y_train, plan.y_test, names)
    return plan


def _with_test_file(codes, test, layers, use, y, common) -> Plan:
    """Every usable row of ``codes`` trains; the usable rows of ``test`` evaluate, classes matched by name."""
    meta, rows = meta_rows(test)
    check_recipe(layer_recipe(common["recipe"], layers), layer_recipe(meta.get("recipe", {}), layers),
                 f"test codes file {test}")
    test_layers = resolve_layers(test, layers)
    names, test_names = common["class_names"], class_names_of(_Named(meta, rows))
    t_use = rows.ok.astype(bool) & (rows.labels >= 0)
    unknown = [test_names[i] for i in sorted({int(v) for v in rows.labels[t_use]}) if test_names[i] not in names]
    if unknown:
        raise UsageError(f"test codes file {test} has classes the training file does not: {', '.join(unknown)}")
    mapping = np.array([names.index(n) if n in names else -1 for n in test_names], dtype=np.int64)
    i_test = np.flatnonzero(t_use)
    if not len(i_test):
        raise UsageError(f"test codes file {test} has no labeled, readable rows to evaluate on")
    i_train = np.flatnonzero(use)
    common = {**common, "n_failed_excluded": common["n_failed_excluded"] + int((~rows.ok.astype(bool)).sum()),
              "n_unlabeled_excluded": common["n_unlabeled_excluded"]
              + int((rows.ok.astype(bool) & (rows.labels < 0)).sum())}
    return Plan(i_train, y[i_train], i_test, mapping[rows.labels[i_test]], str(test), test_layers,
                test_paths=rows.paths, split_source=f"test codes file {test}", test_codes=str(test), **common)


def split_rows(split: np.ndarray, use: np.ndarray, y: np.ndarray, names: list[str], test_fraction: float | None,
               seed: int) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """Row numbers that train and that evaluate, where they came from, and notes.

    The split column when no fraction is given (train fits; ``evaluation_split``, test else val, evaluates),
    else a stratified ``test_fraction`` (default 0.25 when the column has no usable train/held-out pair) of
    the usable rows.
    """
    train, notes = use & (split == "train"), []
    evaluate = evaluation_split(split, use)
    if test_fraction is None and evaluate is not None:
        held = use & (split == evaluate)
        unused = int((use & ~train & ~held).sum())
        if unused:
            notes.append(f"{unused} row(s) in other splits were not used")
        return np.flatnonzero(train), np.flatnonzero(held), f"split column (train / {evaluate})", notes
    if test_fraction is None:
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


def evaluation_split(split: np.ndarray, use: np.ndarray | None = None) -> str | None:
    """The split that evaluates: ``test``, else ``val``, when (usable) ``train`` rows exist beside it; else None."""
    use = np.ones(len(split), bool) if use is None else use
    if not (use & (split == "train")).any():
        return None
    return next((s for s in EVALUATION_SPLITS if (use & (split == s)).any()), None)


def missing_split_error(path, split: np.ndarray, wanted: str) -> UsageError:
    """The error for asking ``path`` for the rows of a split it does not have: the splits it has, with
    counts, and the one that evaluates by the split rule."""
    names, counts = np.unique(np.asarray(split).astype(str), return_counts=True)
    have = ", ".join(f"{n or '(none)'} ({c})" for n, c in zip(names, counts)) or "no rows"
    evaluate = evaluation_split(np.asarray(split).astype(str))
    rule = (f"; its evaluation split (test, else val) is {evaluate}" if evaluate else
            "; it has no train/held-out pair, so classify evaluates on a stratified test fraction")
    return UsageError(f"{path} has no {wanted!r} rows; its splits: {have}{rule}")


def _row_hashes(path, layers, index: np.ndarray, block_bytes: int) -> np.ndarray:
    out = np.empty(len(index), np.int64)
    for pos, X in row_blocks(path, layers, index, block_bytes):
        out[pos] = [hash(row.tobytes()) for row in X]
    return out


def refuse_overlap(plan: Plan, layers: Sequence[str], train_meta: dict, block_bytes: int = BLOCK_BYTES) -> None:
    """ValueError when the test file's rows are training images: identical codes, or the same file (image
    root, path and size) with codes that agree to 1e-3 (the same image extracted on another device or
    precision). Reads both files block by block; only hashes and candidate pairs are held."""
    test_root = str(file_meta(plan.test_path)[0].get("image_root"))
    with h5py.File(plan.codes_path, "r") as h5, h5py.File(plan.test_path, "r") as t5:
        train_sizes, test_sizes = h5["file_size"][()], t5["file_size"][()]
    train_hash = _row_hashes(plan.codes_path, layers, plan.train, block_bytes)
    test_hash = _row_hashes(plan.test_path, plan.test_layers, plan.test, block_bytes)
    order = np.argsort(train_hash, kind="stable")
    at = np.minimum(np.searchsorted(train_hash[order], test_hash), len(order) - 1)
    by_hash = np.where(train_hash[order][at] == test_hash, plan.train[order[at]], -1)
    root, by_file = str(train_meta.get("image_root")), np.full(len(plan.test), -1, np.int64)
    test_files = {(test_root, plan.test_paths[j], int(test_sizes[j])): pos for pos, j in enumerate(plan.test)}
    for i in plan.train:  # a dict of the test rows' files only: the training set may be the larger
        if (pos := test_files.get((root, plan.paths[i], int(train_sizes[i])))) is not None:
            by_file[pos] = i
    shared = (_verified_pairs(plan, layers, by_hash, True, block_bytes)
              | _verified_pairs(plan, layers, by_file, False, block_bytes))
    if shared:
        i, j = min(shared, key=lambda pair: pair[1])
        raise UsageError(
            f"test codes file {plan.test_path} holds {len({j for _, j in shared})} of the {len(plan.train)} training "
            f"images of {plan.codes_path} (first: {plan.test_paths[j]} = {plan.paths[i]}, same codes); evaluating "
            "on training images overstates accuracy: remove them from one of the two image sets")


def _verified_pairs(plan: Plan, layers, candidate: np.ndarray, exact: bool, block_bytes: int) -> set[tuple[int, int]]:
    """(training row, test row) pairs among the candidates whose codes are equal (``exact``) or agree to 1e-3."""
    pairs = set()
    step = max(1, block_bytes // (8 * codes_shape(plan.codes_path, layers)[1]))
    for k in range(0, len(candidate), step):
        sel = np.flatnonzero(candidate[k:k + step] >= 0) + k
        if not len(sel):
            continue
        i, j = candidate[sel], plan.test[sel]
        X_test = _read(plan.test_path, plan.test_layers, j)
        rows, back = np.unique(i, return_inverse=True)
        X_train = _read(plan.codes_path, layers, rows)[back]
        same = ((X_train == X_test).all(axis=1) if exact else
                np.isclose(X_train, X_test, rtol=1e-3, atol=1e-3).all(axis=1))
        pairs |= {(int(a), int(b)) for a, b in zip(i[same], j[same])}
    return pairs


def _read(path, layers, rows: np.ndarray) -> np.ndarray:
    """The float32 codes of the sorted, distinct row numbers ``rows``."""
    with h5py.File(path, "r") as h5:
        return np.hstack([h5["codes"][t][rows] for t in layers], dtype=np.float32)


def _check_stratifiable(y: np.ndarray, names: list[str]) -> None:
    counts = np.bincount(y, minlength=len(names))
    single = [names[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise UsageError(f"class {', '.join(map(repr, single))} has a single example; a stratified test split "
                         "needs at least 2 per class")
