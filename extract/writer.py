"""The writer: computed batches -> part files -> the final HDF5 codes file, each complete or absent.

Parts hold whole batches; each is written when its last batch arrives (see parts.py). The codes file is written
under a temporary name, part by part (bounded memory), with the rows kept from an earlier file (``--update``),
and renamed over the output (see atomic.py). A single process adds each part as it computes it; the assembly
of shards reads the part files one by one.
"""
from __future__ import annotations

import os
import resource
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import codesfile, parts
from .atomic import publish, temporary_name
from .errors import ExtractionError, ExtractionInterrupted
from .reader import ImageList

if TYPE_CHECKING:
    import h5py

    from .inference import Batch


class PartBuffer:
    """The batches of one part of ``n_rows`` rows, copied into its arrays as they come."""

    def __init__(self, n_rows: int, dtype: str):
        self.size, self.dtype, self.n_rows = n_rows, dtype, 0
        self.codes: dict[str, np.ndarray] = {}
        self.ok = np.zeros(n_rows, dtype=bool)
        self.errors: list[str] = []

    def add(self, codes: dict[str, np.ndarray], ok: np.ndarray, errors: list[str]) -> None:
        rows, failed = slice(self.n_rows, self.n_rows + len(errors)), ~ok
        for name, value in codes.items():
            if name not in self.codes:
                self.codes[name] = np.empty((self.size, *value.shape[1:]), dtype=self.dtype)
            self.codes[name][rows] = value
            if failed.any():
                self.codes[name][rows][failed] = np.nan  # a failed image has no codes; NaN makes that impossible to miss
        self.ok[rows] = ok
        self.errors.extend(errors)
        self.n_rows = rows.stop

    def finish(self):
        return self.codes, self.ok, self.errors


def write_parts(batches: Iterable[Batch], plan: parts.PartPlan, todo: list[int], parts_dir: Path, dtype: str,
                progress: bool, assembly: Assembly | None = None) -> None:
    """Write the parts ``todo`` from ``batches`` (their batches in order, never crossing a part boundary), each
    also added to ``assembly`` where given; there, the last one goes to the assembly only: the codes file is
    written right after it, and a run killed before that computes it again."""
    from .progress import progress_bar

    bar = progress_bar(total=sum(len(plan.rows(p)) for p in todo), unit="img", desc="extract", disable=not progress,
                       dynamic_ncols=True)
    pending = iter(todo)
    part, n_failed = next(pending), 0
    buffer = PartBuffer(len(plan.rows(part)), dtype)
    try:
        for codes, ok, errors in batches:
            buffer.add(codes, ok, errors)
            n_failed += int((~ok).sum())
            bar.update(len(errors))
            if n_failed:
                bar.set_postfix(failed=n_failed, refresh=False)
            if buffer.n_rows == len(plan.rows(part)):
                # with an assembly, the last part's file would only serve a kill in the moments before the rename
                if assembly is None or part != todo[-1]:
                    parts.write_part(parts.part_path(parts_dir, part), *buffer.finish())
                if assembly is not None:
                    assembly.add(part, *buffer.finish())
                part = next(pending, None)
                buffer = PartBuffer(len(plan.rows(part)), dtype) if part is not None else None
    except KeyboardInterrupt:
        finished = len(parts.finished_parts(parts_dir))
        raise ExtractionInterrupted(
            f"interrupted: {finished} of {plan.n_parts} parts are saved in {parts_dir}; "
            f"run the same command again to resume") from None
    finally:
        bar.close()


class Assembly:
    """The codes file under its temporary name (atomic.py), its codes written part by part as the parts come
    (``add``), then its rows and attributes, and renamed into place (``finish``). A run that assembles its own
    job (a single process) adds each part as it computes it, so that little is left to write after its last
    batch; ``assemble`` adds the parts from their files."""

    def __init__(self, out: Path, n_rows: int, taps, dtype: str, job_rows: list[int], plan: parts.PartPlan,
                 job: tuple | None = None):
        """``job``: the job's (listing, taps, job rows, kept rows) where the process that opened it assembles it,
        so that they need not be read back from the parts folder."""
        import h5py

        self.out, self.tmp, self.plan, self.job, self.finished = out, temporary_name(out), plan, job, False
        self.flushing: threading.Thread | None = None
        self.job_rows = np.asarray(job_rows, dtype=np.int64)
        self.rows_of: dict[int, tuple[np.ndarray, list[str]]] = {}  # part -> (ok, errors), for the parts added
        # without a chunk cache, whole chunks go to the file straight from the parts' arrays (bench/RESULTS.md)
        self.h5 = h5py.File(self.tmp, "w", rdcc_nbytes=0)
        try:
            self.codes = {tap.name: codesfile.create_codes_dataset(self.h5, tap.name, n_rows, tap.dim, dtype)
                          for tap in taps}
        except BaseException:
            self.abandon()
            raise

    def add(self, part: int, codes: dict[str, np.ndarray], ok: np.ndarray, errors: list[str]) -> None:
        rows = self.plan.rows(part)
        for name, ds in self.codes.items():
            _write_rows(ds, self.job_rows[rows.start:rows.stop], codes[name])
        self.rows_of[part] = ok, errors
        if len(self.rows_of) < self.plan.n_parts:  # after the last part, finish's fsync follows at once
            self._write_back()

    def _write_back(self) -> None:
        """Flush the codes written so far to disk on a thread of its own, so that the fsync before the rename
        finds little left to write: after the last batch, it waited for the whole file (bench/RESULTS.md)."""
        if self.flushing is None or not self.flushing.is_alive():
            self.flushing = threading.Thread(target=_flush_to_disk, args=(self.tmp,), name="cnncodes-writeback")
            self.flushing.start()

    def finish(self, meta: dict, rows: codesfile.Rows) -> None:
        codesfile.write_attrs(self.h5, {**meta, "complete": False})
        codesfile.write_rows(self.h5, rows)
        self.h5.attrs["complete"] = True
        self.h5.close()
        self._joined()
        publish(self.tmp, self.out)
        self.finished = True

    def abandon(self) -> None:
        """Close and delete the temporary file (an error, an interrupted run); nothing once it is finished."""
        if not self.finished:
            self.h5.close()
            self._joined()
            self.tmp.unlink(missing_ok=True)

    def _joined(self) -> None:
        if self.flushing is not None:
            self.flushing.join()


def _flush_to_disk(path: Path) -> None:
    """Write ``path``'s data to disk (what ``publish`` will then wait for less); a failure here is left to it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def assemble(out: Path, listing: ImageList, meta: dict, taps, dtype: str, job_rows: list[int],
             plan: parts.PartPlan, parts_dir: Path, kept: dict[int, int] | None,
             started: Assembly | None = None) -> list[tuple[str, str]]:
    """Write the final codes file from the parts (and kept old rows), then delete the parts. ``started``: this
    process's assembly of the job, holding some parts already. Returns its failures, as ``failures_of`` reads them."""
    import h5py

    assembly = started or Assembly(out, len(listing), taps, dtype, job_rows, plan)
    try:
        for part in range(plan.n_parts):
            if part not in assembly.rows_of:
                path = parts.part_path(parts_dir, part)
                assembly.add(part, {tap.name: parts.read_part_codes(path, tap.name) for tap in taps},
                             *parts.read_part_rows(path))
        n, job_rows_arr = len(listing), assembly.job_rows
        ok, errors = np.zeros(n, dtype=bool), np.array([""] * n, dtype=object)
        for part, (part_ok, part_errors) in assembly.rows_of.items():
            dest = job_rows_arr[plan.rows(part).start:plan.rows(part).stop]
            ok[dest], errors[dest] = part_ok, part_errors
        if kept:
            with h5py.File(out, "r") as h5:
                old = codesfile.read_rows(h5)
            src, dest = np.fromiter(kept.values(), dtype=np.int64), np.fromiter(kept.keys(), dtype=np.int64)
            ok[dest], errors[dest] = old.ok[src], old.errors[src]
            for name, ds in assembly.codes.items():
                _copy_kept_codes(ds, out, name, kept, plan.part_size)
        rows = codesfile.Rows(labels=listing.labels, paths=np.array(listing.paths, dtype=object),
                              split=np.array(listing.splits, dtype=object), ok=ok, errors=errors,
                              file_size=listing.file_size, file_mtime_ns=listing.file_mtime_ns)
        assembly.finish(meta, rows)
    except BaseException:
        assembly.abandon()
        raise
    parts.discard_job(parts_dir)
    return failures_in(rows)


def _copy_kept_codes(ds: h5py.Dataset, old_path: Path, tap: str, kept: dict[int, int], block: int) -> None:
    import h5py

    dest_all = np.fromiter(kept.keys(), dtype=np.int64)
    src_all = np.fromiter(kept.values(), dtype=np.int64)
    with h5py.File(old_path, "r") as old:
        source = old[f"codes/{tap}"]
        for start in range(0, len(dest_all), block):
            src, dest = src_all[start:start + block], dest_all[start:start + block]
            _write_rows(ds, dest, source[src[0]:src[-1] + 1][src - src[0]])


def _write_rows(ds: h5py.Dataset, dest: np.ndarray, values: np.ndarray) -> None:
    if len(dest) and dest[-1] - dest[0] + 1 == len(dest):
        ds[int(dest[0]):int(dest[-1]) + 1] = values  # contiguous: one slice write
    else:
        for i, row in zip(dest, values):
            ds[int(i)] = row


def failures_of(out: Path) -> list[tuple[str, str]]:
    import h5py

    with h5py.File(out, "r") as h5:
        return failures_in(codesfile.read_rows(h5))


def failures_in(rows: codesfile.Rows) -> list[tuple[str, str]]:
    """(path, reason) of the images that could not be read, in file order."""
    return [(p, e) for p, e, ok in zip(rows.paths, rows.errors, rows.ok) if not ok]


def check_writable(out: Path) -> None:
    """Fail before any work when the output folder cannot take the file."""
    folder = out.parent
    probe = folder / f".{out.name}.{os.getpid()}.probe"
    try:
        if not folder.is_dir():
            raise ExtractionError(f"cannot write {out}: the folder {folder} does not exist")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ExtractionError(f"cannot write {out}: {err.strerror or err} in {folder}") from None


def remove_stale_temporaries(out: Path) -> None:
    """Delete half-assembled files (``.OUT.<pid>.tmp``) left by runs that were killed (called holding the
    job's step lock, so no other process is assembling)."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        pid = tmp.name[len(out.name) + 2:-4]
        if pid.isdigit() and int(pid) != os.getpid():
            tmp.unlink(missing_ok=True)


def bytes_needed(n_rows: int, taps, dtype: str) -> int:
    """Size of the codes of ``n_rows`` images, plus room for paths and HDF5 overhead."""
    return n_rows * (sum(t.dim for t in taps) * np.dtype(dtype).itemsize + 512) + (1 << 20)


def check_space(out: Path, disk_need: int, file_need: int, what: str) -> None:
    """Refuse to start writing what cannot fit: free disk space, and the process's largest-file limit."""
    free = shutil.disk_usage(out.parent).free
    largest, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if largest != resource.RLIM_INFINITY and file_need > largest:
        need, room = file_need, largest
    elif disk_need > free:
        need, room = disk_need, free
    else:
        return
    raise ExtractionError(
        f"not enough space for {what} of {out}: about {need / 2**20:,.1f} MiB needed, "
        f"{room / 2**20:,.1f} MiB available; free some space or write elsewhere (nothing was overwritten)")
