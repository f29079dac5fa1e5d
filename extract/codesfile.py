"""The codes file: one self-describing HDF5 file per (image set, backbone recipe).

Layout (readable with plain h5py, no cnncodes needed)::

    /codes/<tap>     float32 (or float16) [N, D], chunked by rows; one dataset per tapped layer
    /labels          int64 [N]   class index into attrs["class_names"], -1 when unlabeled
    /paths           utf-8 [N]   relative to attrs["image_root"]
    /split           utf-8 [N]   "train", "val", "test" or ""
    /ok              bool  [N]   false where the image could not be read (its codes are NaN)
    /errors          utf-8 [N]   one-line reason where ok is false
    /file_size, /file_mtime_ns   int64 [N]   what the image file was when it was read

Attributes: format_version, recipe (JSON; its views: crops averaged per image), backbone, weights
(JSON), taps (JSON), preprocess (JSON), class_names (JSON), image_root, versions (JSON), precision, dtype, complete.

h5py is imported where a file is opened (here, and in parts.py, plan.py and writer.py): a fresh extraction forks
its decoders before it is loaded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:
    import h5py

FORMAT_VERSION = 1
ROW_FIELDS = ("labels", "paths", "split", "ok", "errors", "file_size", "file_mtime_ns")
# The parts of a recipe that change the codes: two files agree when these agree.
RECIPE_KEYS = ("backbone", "weights_sha256", "taps", "preprocess", "precision", "views")
# Keys that files and models made before they were recorded lack: compared only when both sides have them.
_LATER_KEYS = ("precision",)
# Keys that such files lack, with the value that made their codes: files before views had one view.
_DEFAULTS = {"views": 1}


class RecipeMismatch(UsageError):
    """Raised when a file was made with another recipe; the message names the difference."""


def recipe_difference(expected: Mapping, found: Mapping) -> list[str]:
    """Human-readable differences between two recipes (empty when they agree)."""
    out = []
    for key in RECIPE_KEYS:
        a, b = expected.get(key, _DEFAULTS.get(key)), found.get(key, _DEFAULTS.get(key))
        if key in _LATER_KEYS and (a is None or b is None):
            continue
        a, b = comparable(key, a), comparable(key, b)
        if a != b:
            out.append(f"{key}: {short(b)} in the file, {short(a)} asked for")
    return out


def comparable(key: str, value):
    """A recipe value as compared: for taps what was asked for (name, node, pool), not the shapes that follow."""
    return [{k: t[k] for k in ("name", "node", "pool")} for t in value or []] if key == "taps" else value


def check_recipe(expected: Mapping, found: Mapping, what: str) -> None:
    """Raise RecipeMismatch naming every difference between ``found`` and ``expected``."""
    diff = recipe_difference(expected, found)
    if diff:
        raise RecipeMismatch(f"{what} was made with another recipe:\n  " + "\n  ".join(diff))


def short(value, limit: int = 160) -> str:
    """``value`` as one line (its runs of white space, newlines included, made one space) of at most ``limit``
    characters, for the messages."""
    text = " ".join(value.split()) if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class Rows:
    """Per-image columns of a codes file (everything but the codes)."""

    labels: np.ndarray
    paths: np.ndarray
    split: np.ndarray
    ok: np.ndarray
    errors: np.ndarray
    file_size: np.ndarray
    file_mtime_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, parts: Iterable["Rows"]) -> "Rows":
        parts = list(parts)
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in ROW_FIELDS})

    def take(self, index) -> "Rows":
        return Rows(**{f: getattr(self, f)[index] for f in ROW_FIELDS})


def _string_array(values) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def write_rows(h5: h5py.File, rows: Rows) -> None:
    """Write the per-image columns of ``rows`` into an open file."""
    import h5py

    h5.create_dataset("labels", data=rows.labels.astype(np.int64))
    for name in ("paths", "split", "errors"):
        h5.create_dataset(name, data=_string_array(getattr(rows, name)), dtype=h5py.string_dtype("utf-8"))
    h5.create_dataset("ok", data=rows.ok.astype(bool))
    h5.create_dataset("file_size", data=rows.file_size.astype(np.int64))
    h5.create_dataset("file_mtime_ns", data=rows.file_mtime_ns.astype(np.int64))


def read_rows(h5: h5py.File) -> Rows:
    """Read the per-image columns of an open codes file."""
    strings = {n: _string_array(h5[n].asstr()[()]) for n in ("paths", "split", "errors")}
    return Rows(labels=h5["labels"][()], ok=h5["ok"][()], file_size=h5["file_size"][()],
                file_mtime_ns=h5["file_mtime_ns"][()], **strings)


def write_attrs(h5: h5py.File, meta: Mapping) -> None:
    """Store the recipe and provenance as attributes (JSON for structured values)."""
    h5.attrs["format_version"] = FORMAT_VERSION
    for key, value in meta.items():
        h5.attrs[key] = value if isinstance(value, (str, int, float, bool, np.bool_)) else json.dumps(value)


def read_meta(h5: h5py.File) -> dict:
    """All attributes of an open codes file, JSON values decoded."""
    meta = {}
    for key, value in h5.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        meta[key] = value.item() if isinstance(value, np.generic) else value
    return meta


def create_codes_dataset(h5: h5py.File, tap: str, n_rows: int, dim: int, dtype: str) -> h5py.Dataset:
    """An empty ``/codes/<tap>`` dataset chunked by rows (about 1 MiB per chunk)."""
    itemsize = np.dtype(dtype).itemsize
    rows_per_chunk = max(1, min(max(n_rows, 1), (1 << 20) // max(1, dim * itemsize)))
    return h5.create_dataset(f"codes/{tap}", shape=(n_rows, dim), dtype=dtype, chunks=(rows_per_chunk, dim))


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a finished codes file."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return bool(h5.attrs.get("complete", False))
    except (OSError, KeyError):
        return False


@dataclass
class CodesFile:
    """A codes file read into memory: meta, per-image rows and the codes of the requested taps."""

    path: Path
    meta: dict
    rows: Rows
    codes: dict[str, np.ndarray]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def taps(self) -> list[str]:
        return [t["name"] for t in self.meta.get("taps", [])]

    @property
    def recipe(self) -> dict:
        return dict(self.meta.get("recipe", {}))


def open_codes(path: str | os.PathLike, taps: Iterable[str] | None = None) -> CodesFile:
    """Read a complete codes file; ``taps`` picks which /codes datasets to load (default all)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such codes file")
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise UsageError(f"{path} is not an HDF5 codes file ({err})") from err
    with h5:
        meta = read_meta(h5)
        if "codes" not in h5 or "labels" not in h5:
            raise UsageError(f"{path} is an HDF5 file but not a cnncodes codes file (no /codes or /labels)")
        if not meta.get("complete", False):
            raise UsageError(f"{path} is incomplete (an extraction was interrupted); rerun the extract command")
        available = list(h5["codes"].keys())
        wanted = list(taps) if taps is not None else available
        missing = [t for t in wanted if t not in available]
        if missing:
            raise UsageError(f"{path} has no tap {', '.join(missing)}; it has: {', '.join(available)}")
        codes = {t: h5["codes"][t][()] for t in wanted}
        rows = read_rows(h5)
    return CodesFile(path, meta, rows, codes)
