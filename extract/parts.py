"""Part files: how a long extraction survives kills and how the final codes file is assembled.

The job's images are cut into parts of ``part_size`` rows. Each finished part is written to a
temporary name and renamed, so a part file that exists is complete. ``job.json`` in the parts
folder identifies the job and carries the codes file's attributes, ``rows.h5`` its rows (listing,
kept rows of ``--update``), so that any process can assemble it (see shards.py); a rerun of the
same job skips the parts that exist. The final file is assembled part by part (bounded memory)
into a temporary name, then renamed over the target.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import codesfile
from .atomic import write_file, writing
from .errors import ExtractionError
from .reader import ImageList
from .recipe import Tap

JOB_FILE = "job.json"
ROWS_FILE = "rows.h5"
CODES_PREFIX = "codes:"


def parts_dir_for(out: Path) -> Path:
    """The folder holding the parts of ``out`` while it is being extracted."""
    return out.with_name(out.name + ".parts")


def job_digest(identity: dict) -> str:
    """A stable digest of everything that makes two runs the same job."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass
class PartPlan:
    """Which rows of the job each part holds."""

    n_rows: int
    part_size: int

    @property
    def n_parts(self) -> int:
        return (self.n_rows + self.part_size - 1) // self.part_size

    def rows(self, part: int) -> range:
        start = part * self.part_size
        return range(start, min(start + self.part_size, self.n_rows))


def part_size_for(n_rows: int, ranks: int, part_size: int, batch_size: int) -> int:
    """The part size of a job of ``n_rows`` shared by ``ranks`` processes: ``part_size``, made smaller where
    it would leave a rank without a part (a rank's share runs on its own CPUs or GPU). The candidates: an
    even share in whole batches, whole batches within the share, then the share itself; the first that
    gives every rank a part (there being enough rows) wins."""
    if ranks == 1 or n_rows >= ranks * part_size:
        return part_size
    share = -(-n_rows // ranks)
    batches = (-(-share // batch_size) * batch_size, n_rows // ranks // batch_size * batch_size)
    return next((size for size in batches if size and -(-n_rows // size) >= min(ranks, n_rows)),
                max(1, n_rows // ranks))


def part_path(parts_dir: Path, part: int) -> Path:
    return parts_dir / f"part-{part:06d}.npz"


@dataclass
class Job:
    """What ``job.json`` says: the job's identity, its parts, and the codes file's attributes (``meta``)."""

    digest: str
    n_parts: int
    part_size: int
    meta: dict
    shards: int = 1  # the shard count of the run that opened the job (for the messages)
    asked_part_size: int = 0  # --part-size (in whole batches); part_size may be smaller (see part_size_for)

    def about(self) -> dict:
        return {**self.meta["recipe"], "part size": self.asked_part_size or self.part_size, "dtype": self.meta["dtype"],
                "image root": self.meta["image_root"]}


def read_job(parts_dir: Path) -> Job | None:
    """The job of ``parts_dir``; None when there is none (or one written by an older version)."""
    try:
        return Job(**json.loads((parts_dir / JOB_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def plan_parts(parts_dir: Path, digest: str, n_rows: int, part_size: int) -> PartPlan:
    """The parts of the job ``digest``: as ``job.json`` cut them when a run of the same job (any number of
    ranks) opened it already, so that its parts are resumed; else of ``part_size`` rows."""
    found = read_job(parts_dir)
    return PartPlan(n_rows, found.part_size if found is not None and found.digest == digest else part_size)


def open_job(parts_dir: Path, job: Job, listing: ImageList, job_rows: list[int], kept: dict[int, int] | None,
             mine: list[int], replace: bool) -> tuple[set[int], bool, bool]:
    """Prepare ``parts_dir`` for ``job`` (under the job's step lock: ranks starting together meet here);
    return (finished parts, whether the parts of another job were discarded, whether this call wrote the job). A
    job differing from the one found is refused naming the difference unless ``replace`` (a single run: nobody
    else's)."""
    found, discarded = read_job(parts_dir), False
    created = found is None or found.digest != job.digest
    if created:
        if found is not None and not replace:
            raise ExtractionError(f"{parts_dir} holds the parts of an extraction made otherwise ("
                                  + "; ".join(_difference(job.about(), found.about())) + "): every shard must "
                                  f"use the same options; delete {parts_dir} to start over")
        if parts_dir.exists():
            discard_job(parts_dir, ignore_errors=False)
            discarded = found is not None
        parts_dir.mkdir(parents=True)
        _write_job_rows(parts_dir, listing, job_rows, kept)
        write_file(parts_dir / JOB_FILE, json.dumps(asdict(job)))  # last: a job.json names a whole job
    for part in mine:
        for stale in parts_dir.glob(f".{part_path(parts_dir, part).name}.*.tmp"):
            stale.unlink()  # a part that was being written when this shard's earlier run was killed
    return {p for p in finished_parts(parts_dir) if p < job.n_parts}, discarded, created


def discard_job(parts_dir: Path, ignore_errors: bool = True) -> None:
    """Remove ``parts_dir``, its ``job.json`` first: a removal cut short by a kill leaves a folder that names no
    job (started afresh by the next run), never a job whose rows file is already gone. ``ignore_errors``: after
    the codes file is written, a part left behind is no failure; before a new job, it is."""
    (parts_dir / JOB_FILE).unlink(missing_ok=True)
    shutil.rmtree(parts_dir, ignore_errors=ignore_errors)


def finished_parts(parts_dir: Path) -> set[int]:
    """The numbers of the part files in ``parts_dir`` (each one complete: see the module note)."""
    return {int(p.stem.split("-")[1]) for p in parts_dir.glob("part-*.npz")}


def missing_parts(parts_dir: Path, n_parts: int) -> list[int]:
    return [p for p in range(n_parts) if not part_path(parts_dir, p).exists()]


def _difference(asked: dict, found: dict) -> list[str]:
    """What differs, in words: 'preprocess crop: 32 in the parts, 36 asked for'."""
    said = []
    for key in asked:
        a, b = codesfile.comparable(key, asked.get(key)), codesfile.comparable(key, found.get(key))
        if isinstance(a, dict) and isinstance(b, dict):
            said += [f"{key} {k}: {codesfile.short(b.get(k), 80)} in the parts, {codesfile.short(a.get(k), 80)} "
                     "asked for" for k in a if a.get(k) != b.get(k)]
        elif a != b:
            said.append(f"{key}: {codesfile.short(b, 80)} in the parts, {codesfile.short(a, 80)} asked for")
    return said or ["the images: names, sizes or modification times"]


def _write_job_rows(parts_dir: Path, listing: ImageList, job_rows: list[int], kept: dict[int, int] | None) -> None:
    """The listing, the job's rows and the rows kept from an earlier file (--update): what assembly needs."""
    rows = codesfile.Rows(labels=listing.labels, paths=np.array(listing.paths, dtype=object),
                          split=np.array(listing.splits, dtype=object), ok=np.zeros(len(listing), bool),
                          errors=np.array([""] * len(listing), dtype=object), file_size=listing.file_size,
                          file_mtime_ns=listing.file_mtime_ns)

    def write(path: Path) -> None:
        import h5py

        with h5py.File(path, "w") as h5:
            codesfile.write_rows(h5, rows)
            h5.create_dataset("job_rows", data=np.asarray(job_rows, dtype=np.int64))
            if kept is not None:
                h5.create_dataset("kept_new", data=np.fromiter(kept.keys(), dtype=np.int64, count=len(kept)))
                h5.create_dataset("kept_old", data=np.fromiter(kept.values(), dtype=np.int64, count=len(kept)))
    write_file(parts_dir / ROWS_FILE, write)


def read_job_rows(parts_dir: Path, job: Job) -> tuple[ImageList, list[Tap], list[int], dict[int, int] | None]:
    """(listing, taps, job rows, kept rows) of the job, as the run that opened it saw them."""
    import h5py

    with h5py.File(parts_dir / ROWS_FILE, "r") as h5:
        rows = codesfile.read_rows(h5)
        job_rows = h5["job_rows"][()].tolist()
        kept = dict(zip(h5["kept_new"][()].tolist(), h5["kept_old"][()].tolist())) if "kept_new" in h5 else None
    meta = job.meta
    listing = ImageList(Path(meta["image_root"]), list(rows.paths), rows.labels, list(rows.split),
                        meta["class_names"], rows.file_size, rows.file_mtime_ns)
    taps = [Tap.from_dict(t) for t in meta["recipe"]["taps"]]
    return listing, taps, job_rows, kept


def write_part(path: Path, codes: dict[str, np.ndarray], ok: np.ndarray, errors: list[str]) -> None:
    """Write one finished part atomically (see atomic.py). Parts are plain .npz files."""
    arrays = {f"{CODES_PREFIX}{tap}": values for tap, values in codes.items()}
    with writing(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ok=ok, errors=np.array(errors, dtype=str), **arrays)


def read_part_rows(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ok flags and error strings of a part."""
    with np.load(path, allow_pickle=False) as part:
        return part["ok"], [str(e) for e in part["errors"]]


def read_part_codes(path: Path, tap: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as part:
        return part[f"{CODES_PREFIX}{tap}"]
