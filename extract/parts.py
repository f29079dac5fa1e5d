"""Part files: how a long extraction survives kills and how the final codes file is assembled.

The job's images are cut into parts of ``part_size`` rows. Each finished part is written to a
temporary name and renamed, so a part file that exists is complete. ``job.json`` in the parts
folder identifies the job; a rerun of the same job skips the parts that exist. The final file is
assembled part by part (bounded memory) into a temporary name, then renamed over the target.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_file, writing

JOB_FILE = "job.json"
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


def part_path(parts_dir: Path, part: int) -> Path:
    return parts_dir / f"part-{part:06d}.npz"


def open_job(parts_dir: Path, digest: str, n_parts: int) -> tuple[set[int], bool]:
    """Prepare ``parts_dir`` for job ``digest``; return (finished parts, whether stale parts were discarded)."""
    job_file = parts_dir / JOB_FILE
    discarded = False
    if parts_dir.exists():
        try:
            same = json.loads(job_file.read_text()).get("digest") == digest
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts_dir)
            discarded = True
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not job_file.exists():
        write_file(job_file, json.dumps({"digest": digest, "n_parts": n_parts}))
    for stale in parts_dir.glob("*.tmp"):
        stale.unlink()  # a part that was being written when the run was killed
    done = {int(p.stem.split("-")[1]) for p in parts_dir.glob("part-*.npz")}
    return {p for p in done if p < n_parts}, discarded


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
