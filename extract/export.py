"""Codes out to the formats other tools read, without cnncodes or h5py on their side.

``npy``: a folder with one ``<tap>.npy`` per tap (float32 ``[N, D]``, memory-mappable with
``np.load(..., mmap_mode="r")``) and ``rows.parquet`` (path, label, split, ok, error) in the same row
order: the layout of clip-retrieval / embedding-reader. ``parquet``: one table with those columns
and one fixed-size list<float32> column per tap. The recipe and class names travel as the parquet
schema's metadata. Both are written in row chunks (any file size) and published atomically.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from .atomic import temporary_name, writing
from .codesfile import open_codes
from .errors import UsageError
from .outputs import claim_output

FORMATS = ("npy", "parquet")
ROWS_FILE = "rows.parquet"
CHUNK_ROWS = 4096


def export_codes(codes: str | os.PathLike, out: str | os.PathLike, to: str = "npy", ok_only: bool = False,
                 overwrite: bool = False) -> Path:
    """Write the codes file ``codes`` to ``out`` as ``to`` (npy folder or parquet file); returns ``out``.
    Failed rows are kept with their reason (codes NaN) unless ``ok_only``; an existing ``out`` is
    refused unless ``overwrite``."""
    if to not in FORMATS:
        raise UsageError(f"--to must be one of {', '.join(FORMATS)}, not {to!r}")
    cf = open_codes(codes, taps=[])  # one clear error for a missing, foreign or incomplete file
    meta, rows = cf.meta, cf.rows
    with claim_output(out, folder=to == "npy", overwrite=overwrite) as out, h5py.File(codes, "r") as h5:
        keep = np.flatnonzero(rows.ok) if ok_only else np.arange(len(rows))
        table = _rows_table(rows, keep, meta)
        if to == "npy":
            _publish_folder(out, lambda tmp: _write_npy(h5, keep, table, tmp))
        else:
            with writing(out) as tmp:
                _write_parquet(h5, keep, table, tmp)
    return out


def _rows_table(rows, keep: np.ndarray, meta: dict):
    """The per-row columns of the kept rows, with the recipe and class names as schema metadata."""
    import pyarrow as pa

    names = list(meta.get("class_names", []))
    labels = rows.labels[keep]
    columns = {
        "path": pa.array(rows.paths[keep].tolist(), pa.string()),
        "label": pa.array([names[i] if i >= 0 else None for i in labels.tolist()], pa.string()),
        "label_index": pa.array(labels, pa.int64()),
        "split": pa.array(rows.split[keep].tolist(), pa.string()),
        "ok": pa.array(rows.ok[keep], pa.bool_()),
        "error": pa.array(rows.errors[keep].tolist(), pa.string()),
    }
    schema_meta = {"cnncodes.recipe": json.dumps(meta.get("recipe", {})), "cnncodes.class_names": json.dumps(names),
                   "cnncodes.image_root": str(meta.get("image_root", ""))}
    return pa.table(columns).replace_schema_metadata(schema_meta)


def _chunks(h5: h5py.File, tap: str, keep: np.ndarray):
    """The kept rows of ``/codes/<tap>`` as float32, CHUNK_ROWS at a time."""
    dataset = h5["codes"][tap]
    for start in range(0, len(keep), CHUNK_ROWS):
        index = keep[start:start + CHUNK_ROWS]
        if len(index):
            yield dataset[index[0]:index[-1] + 1][index - index[0]].astype(np.float32, copy=False)


def _write_npy(h5: h5py.File, keep: np.ndarray, table, folder: Path) -> None:
    import pyarrow.parquet as pq

    for tap in h5["codes"]:
        array = np.lib.format.open_memmap(folder / f"{tap}.npy", mode="w+", dtype=np.float32,
                                          shape=(len(keep), h5["codes"][tap].shape[1]))
        start = 0
        for chunk in _chunks(h5, tap, keep):
            array[start:start + len(chunk)] = chunk
            start += len(chunk)
        array.flush()
        del array
    pq.write_table(table, folder / ROWS_FILE)


def _write_parquet(h5: h5py.File, keep: np.ndarray, table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    taps = list(h5["codes"])
    dims = {tap: h5["codes"][tap].shape[1] for tap in taps}
    schema = table.schema
    for tap in taps:
        schema = schema.append(pa.field(tap, pa.list_(pa.float32(), dims[tap])))
    with pq.ParquetWriter(path, schema) as writer:
        streams = [_chunks(h5, tap, keep) for tap in taps]
        for start in range(0, len(keep), CHUNK_ROWS):
            part = table.slice(start, CHUNK_ROWS)
            for tap, stream in zip(taps, streams):
                codes = next(stream)
                part = part.append_column(tap, pa.FixedSizeListArray.from_arrays(codes.reshape(-1), dims[tap]))
            writer.write_table(part.replace_schema_metadata(schema.metadata))
        if not len(keep):
            writer.write_table(schema.empty_table())


def _publish_folder(out: Path, fill) -> None:
    """Fill a temporary folder beside ``out``, then put it in place of ``out`` (a kill leaves ``out`` as it was)."""
    tmp, old = temporary_name(out), temporary_name(out.with_name(out.name + ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if out.exists():
            os.replace(out, old) if out.is_dir() else out.replace(old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)
