"""Sharded extraction: rank r of n extracts its own parts; the codes file is assembled once all parts exist.

The rank comes from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) or from ``--shard r/n`` (Slurm arrays, several shells). Part p belongs to
rank p % n: a deterministic split without padding, so no row is duplicated or missing whatever n
and the number of images; a rank with no part just finishes. The ranks meet only through files in
the shared ``OUT.parts`` folder (no process group): the last rank to finish assembles the file
under the job's step lock (see lock.py), which also works across nodes on a shared file system,
and for ranks that do not run at the same time (an array job whose tasks wait in the queue).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import codesfile, parts, writer
from .checks import check
from .errors import ExtractionError, UsageError
from .lock import JOINER, OutputLock, output_lock



@dataclass(frozen=True)
class Shard:
    """Which share of the parts this process extracts, and how many processes share its machine."""

    rank: int = 0
    count: int = 1
    local_rank: int = 0
    local_count: int = 1
    source: str = ""  # "torchrun", "--shard", or "" for one process

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.rank}/{self.count}"

    def parts(self, n_parts: int) -> list[int]:
        """This rank's parts: every n-th, starting at its rank."""
        return list(range(self.rank, n_parts, self.count))

    def cpus(self) -> int:
        """The CPUs of this process: the machine's (its affinity) shared by the ranks on it, at least one."""
        from .device import usable_cpus  # here: assembling alone needs no torch

        return max(1, usable_cpus() // self.local_count)

    def device(self, device: str, cuda_count: int) -> str:
        """``auto`` or ``cuda`` becomes ``cuda:LOCAL_RANK`` (modulo the GPUs) when several ranks share a
        machine with GPUs; an explicit ``cuda:N`` or ``cpu`` is kept."""
        if self.local_count > 1 and cuda_count > 0 and device in ("auto", "cuda"):
            return f"cuda:{self.local_rank % cuda_count}"
        return device


def resolve(shard: tuple[int, int] | None, environ: Mapping[str, str]) -> Shard:
    """The shard of this process: torchrun's environment (WORLD_SIZE > 1), ``shard``, or the whole job.
    When both are given they must agree."""
    check("shard", tuple(shard) if shard else None)
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Shard(*shard, source="--shard") if shard else Shard()
    rank = int(environ.get("RANK", "0") or 0)
    if shard and shard != (rank, world):
        raise UsageError(f"--shard {shard[0]}/{shard[1]} disagrees with torchrun's RANK={rank} WORLD_SIZE={world}; "
                         "under torchrun leave --shard out")
    return Shard(rank, world, int(environ.get("LOCAL_RANK", "0") or 0),
                 int(environ.get("LOCAL_WORLD_SIZE", "1") or 1), "torchrun")


def assemble_when_complete(out: Path, held: OutputLock, started: writer.Assembly | None = None
                           ) -> tuple[bool, list[int], list[tuple[str, str]] | None]:
    """Under the job's step lock: assemble ``out`` when every part exists and no other rank has (``started``: this
    process's assembly, see writer.Assembly). Returns (assembled by this call, the parts still missing, the file's
    failures where this call wrote it)."""
    parts_dir = parts.parts_dir_for(out)
    with held.step():
        job = parts.read_job(parts_dir)
        if job is None:
            if codesfile.is_complete(out):
                return False, [], None  # another rank assembled it and removed the parts
            raise ExtractionError(f"nothing to assemble for {out}: {parts_dir} holds no extraction")
        missing = [p for p in parts.missing_parts(parts_dir, job.n_parts) if not (started and p in started.rows_of)]
        if missing:
            return False, missing, None
        writer.remove_stale_temporaries(out)  # a killed assembly's; none is running while we hold the step
        listing, taps, job_rows, kept = started.job if started and started.job else parts.read_job_rows(parts_dir, job)
        need = writer.bytes_needed(len(listing), taps, job.meta["dtype"])
        writer.check_space(out, need, need, "the codes file")
        failures = writer.assemble(out, listing, job.meta, taps, job.meta["dtype"], job_rows,
                                   parts.PartPlan(len(job_rows), job.part_size), parts_dir, kept, started)
        return True, [], failures


def assemble_codes(out: str | os.PathLike) -> bool:
    """``cnncodes assemble``: write ``out`` from the parts that the shards of its extraction left.
    False when ``out`` is complete already; ExtractionError naming the missing parts and shards."""
    out = Path(out)
    parts_dir = parts.parts_dir_for(out)
    if parts.read_job(parts_dir) is None:
        if codesfile.is_complete(out):
            return False
        raise ExtractionError(f"nothing to assemble for {out}: {parts_dir} holds no extraction "
                              f"(run `cnncodes extract ... -o {out}` first)")
    with output_lock(out, JOINER) as held:
        assembled, missing, _ = assemble_when_complete(out, held)
    if missing:
        raise ExtractionError(f"cannot assemble {out} yet: {missing_text(parts_dir, missing)}")
    return assembled


def missing_text(parts_dir: Path, missing: list[int]) -> str:
    """'2 of 6 parts are missing (1, 3), those of shard 1/2' for the messages."""
    job = parts.read_job(parts_dir)
    shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
    text = f"{len(missing)} of {job.n_parts} parts are missing ({shown})"
    if job.shards > 1:
        owners = sorted({p % job.shards for p in missing})
        text += f", those of shard {', '.join(f'{r}/{job.shards}' for r in owners)}"
    return text + "; run the missing shards (the same command), then assemble"
