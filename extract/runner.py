"""Drive an extraction: plan the job, run the missing parts (read -> map -> write), assemble the file.

``extract_codes`` is the one verb: its keywords make a ``Recipe`` (what defines the codes) and
``RunOptions`` (how fast and where); see plan.py, batches.py, network.py, inference.py and writer.py for the
steps.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import parts, shards, writer
from .backbones import DEFAULT_BACKBONE, get_backbone
from .batches import Decoders, Decoding
from .options import check_options
from .device import Device, check_precision, choose_device, pick_precision, usable_cpus
from .errors import ExtractionError, ExtractionInterrupted, UsageError  # noqa: F401  (re-exported)
from .inference import default_batch_size, default_forward_batch
from .mapper import make_computer
from .lock import output_lock
from .outputs import refuse_inside_images
from .network import prepare
from .plan import fresh, ignored_note, plan_job
from .reader import list_images, stat_files
from .recipe import DEFAULT_PART_SIZE, Recipe, RunOptions, preprocess_config
from .options import MAX_UNPOOLED_DIM
from .versions import installed_versions
from .weights import locate_weights


@dataclass
class ExtractResult:
    """What an extraction did."""

    path: Path
    n_images: int
    n_extracted: int  # rows this run extracted (its parts saved by an earlier run are n_reused)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False
    resumed_parts: int = 0
    n_reused: int = 0  # rows of the resumed_parts
    notes: list[str] = field(default_factory=list)
    runtime: str = ""  # what computed the codes, e.g. "cpu bf16 openvino, 2 stream(s)"
    shard: str = ""  # "r/n" when this process extracted one shard of the job
    missing_parts: list[int] = field(default_factory=list)  # a shard's run: parts other shards still owe
    n_parts: int = 0
    shard_parts: int = 0  # of them, this shard's
    assembled: bool = False  # by this process

    @property
    def images_per_second(self) -> float:
        """This run's extracted images over this run's time (rows reused from saved parts not counted)."""
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Settings:
    """RunOptions with the device's defaults filled in; parts hold whole batches."""

    device: Device
    asked_precision: str  # --precision, checked for the device; ``precision`` resolves auto
    batch_size: int
    workers: int
    part_size: int
    progress: bool
    streams: int = 1
    asked_batch_size: int | None = None  # --batch-size, where given

    @classmethod
    def of(cls, options: RunOptions, shard: shards.Shard = shards.Shard()) -> Settings:
        """Ranks sharing a machine share its CPUs, and each takes its own GPU (see shards.Shard)."""
        dev = choose_device(options.device, shard)
        bs = options.batch_size or default_batch_size(dev)
        part_size = max(bs, (options.part_size or DEFAULT_PART_SIZE) // bs * bs)
        cpus = shard.cpus()
        workers = options.workers if options.workers is not None else default_workers(dev, cpus)
        return cls(dev, check_precision(options.precision, dev.type), bs, workers, part_size, options.progress,
                   forward_streams(dev, cpus), options.batch_size)

    @functools.cached_property
    def precision(self) -> str:
        """The precision run, ``auto`` resolved when first needed: on the CPU OpenVINO says what is native (its
        import and a CPU query), which a fresh job's decoders need not wait for."""
        return pick_precision(self.asked_precision, self.device)

    @property
    def forward_batch(self) -> int:
        """Images per forward pass: the batch size asked for, else the default for the precision run (known only
        after the decoders fork; each decoded batch of ``batch_size`` runs as forward passes of this many)."""
        return self.asked_batch_size or default_forward_batch(self.device, self.precision, self.batch_size)

    def part_size_for(self, n_rows: int, rank: shards.Shard) -> int:
        """The part size of a new job of ``n_rows`` shared by ``rank``'s ranks (see parts.part_size_for)."""
        return parts.part_size_for(n_rows, rank.count, self.part_size, self.batch_size)


def default_workers(device: Device, cpus: int | None = None) -> int:
    """Decode worker processes: one per CPU (at most 16) on the CPU, where they sleep while the network
    runs; on a GPU one fewer than the CPUs (at least one, at most eight). ``cpus``: this process's share."""
    cpus = cpus or usable_cpus()
    return min(16, cpus) if device.type == "cpu" else max(1, min(8, cpus - 1))


def forward_streams(device: Device, cpus: int | None = None) -> int:
    """Concurrent inference streams on the CPU: one single-threaded stream per CPU (at most 16)."""
    return default_workers(device, cpus) if device.type == "cpu" else 1


def takes_turns(decoded, computer, settings: Settings) -> bool:
    """Whether decoding and the forward pass take turns on the cores (``Decoding.in_turns``): where decoders and
    OpenVINO streams each fill every core, as they do by default in one process (not for shards sharing them)."""
    return (isinstance(decoded, Decoding) and computer.runtime == "openvino"
            and settings.workers == settings.streams == usable_cpus())


def extract_codes(source: str | os.PathLike, out: str | os.PathLike, *, backbone: str = DEFAULT_BACKBONE,
                  layers: tuple[str, ...] | list[str] = ("penultimate",), pool: str = "avg", weights: str | None = None,
                  device: str = "auto", precision: str = "auto", batch_size: int | None = None,
                  workers: int | None = None, part_size: int | None = None, resize: int | None = None,
                  crop: int | None = None, dtype: str = "float32", overwrite: bool = False, update: bool = False,
                  progress: bool = True, max_dim: int = MAX_UNPOOLED_DIM, expected_recipe: dict | None = None,
                  shard: shards.Shard | tuple[int, int] | None = None, path_column: str | None = None,
                  label_column: str | None = None, split_column: str | None = None, views: int = 1) -> ExtractResult:
    """Extract ReLU'd codes of ``layers`` for every image under ``source`` into the HDF5 file ``out``.

    A killed run resumes from its finished parts when the same command is run again. An existing
    ``out`` is reused when its recipe and image set match, refused otherwise (``overwrite`` redoes
    it, ``update`` extracts only new and modified images). ``expected_recipe`` (from a trained model)
    makes a recipe that differs an error. A second extraction into the same ``out`` is refused.
    ``shard`` (r, n), or a ``shards.Shard`` (``shards.resolve`` reads torchrun's environment), extracts
    only the parts of rank r of n; the last rank to finish assembles the file (see shards.py).
    ``path_column``, ``label_column``, ``split_column`` name a manifest's columns (reader.list_images).
    ``views`` (1, 2 or 10, images.views_of): each image's codes are the mean over that many crops of it.
    """
    out = Path(out)
    refuse_inside_images(out, source)
    writer.check_writable(out)
    check_options({"dtype": dtype, "views": views})  # the declared rules (options.ExtractConfig)
    rank = shard if isinstance(shard, shards.Shard) else shards.resolve(shard, {})
    if rank.sharded and overwrite:
        raise UsageError(f"--overwrite cannot be used by shards (this is shard {rank}, from {rank.source}): a "
                         f"shard starting late would redo the others' work; delete {out} first instead")
    listing = list_images(source, path_column=path_column, label_column=label_column, split_column=split_column,
                          stat=False)
    bb = get_backbone(backbone)
    prep = preprocess_config(bb, resize, crop)
    if precision == "auto" and expected_recipe and expected_recipe.get("precision"):
        precision = expected_recipe["precision"]  # predict: the model's codes were made in this precision
    settings = Settings.of(RunOptions(device, precision, batch_size, workers, part_size, progress), rank)
    if settings.device.type == "cuda":
        import torch

        torch.cuda.set_device(str(settings.device))  # pinned memory and autocast on this rank's GPU, not GPU 0
    parts_dir = parts.parts_dir_for(out)
    with output_lock(out, rank.rank if rank.sharded else None) as held:
        started = time.perf_counter()
        decoders = functools.partial(Decoders, listing, prep=prep, batch_size=settings.batch_size,
                                     workers=settings.workers, rank_parts=rank.parts, views=views)
        # a fresh job's decoders start before the network is built: one core would idle meanwhile
        early = (decoders(list(range(len(listing))), part_size=settings.part_size_for(len(listing), rank))
                 if fresh(out, overwrite, parts_dir) else None)
        stat_files(listing)  # the decoders need only the paths: the sizes and times are taken beside them
        winfo = locate_weights(bb, weights)  # hashes the checkpoint, or reads its remembered hash: after the fork
        network = prepare(bb, winfo, list(layers), pool, prep, max_dim, settings.device)
        taps = network.taps
        recipe = Recipe.make(bb, winfo, taps, prep, settings.precision, views).as_dict()
        if expected_recipe is not None:
            from .codesfile import check_recipe

            check_recipe(expected_recipe, recipe, "the model")
        with held.step():  # ranks plan and open the job one at a time, never during an assembly
            plan = plan_job(out, listing, recipe, overwrite, update)
            result = ExtractResult(out, len(listing), len(plan.job_rows), notes=plan.notes + ignored_note(listing),
                                   shard=str(rank) if rank.sharded else "")
            if plan.up_to_date:
                result.up_to_date, result.failures = True, writer.failures_of(out)
                return result
            part_plan, done, created = _open_job(parts_dir, settings, plan, rank, result, _file_meta(
                recipe, winfo, listing, settings, dtype), listing)
        mine = rank.parts(part_plan.n_parts)
        todo = [p for p in mine if p not in done]
        result.resumed_parts, result.n_parts, result.shard_parts = len(mine) - len(todo), part_plan.n_parts, len(mine)
        result.n_extracted = sum(len(part_plan.rows(p)) for p in todo)
        result.n_reused = sum(len(part_plan.rows(p)) for p in mine if p not in todo)
        need = writer.bytes_needed(len(listing), taps, dtype)
        writer.check_space(out, 2 * need, need, "the parts and the codes file")
        if early and not early.covers(plan.job_rows, part_plan.part_size, todo):
            early = None  # the job turned out otherwise (a file or parts appeared): those decoders stop
        releasing = None
        assembly = None
        if todo and not rank.sharded:  # a single process assembles its own job: each part goes in as it is computed
            writer.remove_stale_temporaries(out)  # a killed run's (this process holds the whole output)
            assembly = writer.Assembly(out, len(listing), taps, dtype, plan.job_rows, part_plan,
                                       job=(listing, taps, plan.job_rows, plan.kept) if created else None)
        try:
            if todo:
                # the workers decode while the network is converted or loaded
                spent = _compute_parts(early or decoders(plan.job_rows, part_size=part_plan.part_size, todo=todo),
                                       network, prep, settings, views, part_plan, todo, parts_dir, dtype, result,
                                       assembly)
                early = None
                releasing = release_in_background(spent)
            result.assembled, result.missing_parts, failures = shards.assemble_when_complete(out, held, assembly)
        finally:
            if assembly is not None:
                assembly.abandon()  # unless it was finished (renamed into place)
        if failures is None:  # this call wrote no file: another rank's, or none yet
            failures = [] if result.missing_parts else writer.failures_of(out)
        result.failures = failures
        if releasing is not None:
            releasing.join()
        result.seconds = time.perf_counter() - started
        return result


def _compute_parts(job_decoders: Decoders, network, prep: dict, settings: Settings, views: int, part_plan, todo,
                   parts_dir: Path, dtype: str, result: ExtractResult, assembly: writer.Assembly | None) -> list:
    """Compute the parts ``todo`` from the decoded batches and write them (into ``assembly`` too, where given);
    returns what the run held (the compiled network, the decoders and their slots) for ``release_in_background``."""
    computer = make_computer(network, prep, settings.device, settings.precision, settings.forward_batch,
                             settings.streams, views)
    result.runtime = computer.describe()
    result.notes.extend([computer.note] if computer.note else [])
    decoded = job_decoders.batches
    batches = decoded.in_turns() if takes_turns(decoded, computer, settings) else decoded
    writer.write_parts(computer.map(batches), part_plan, todo, parts_dir, dtype, settings.progress, assembly)
    return [computer, job_decoders]


def release_in_background(objects: list) -> threading.Thread:
    """Free ``objects`` (of which the caller keeps no other reference) on a thread of their own. Freeing the
    compiled network and the decoders' shared slots takes a while (the slots with the GIL released; the network
    holds it), so this runs beside the assembly, which leaves the other core idle (figures in bench/RESULTS.md)."""
    thread = threading.Thread(target=objects.clear, name="cnncodes-release")
    thread.start()
    return thread


def _open_job(parts_dir: Path, settings: Settings, plan, rank: shards.Shard, result: ExtractResult, meta: dict,
              listing) -> tuple[parts.PartPlan, set[int], bool]:
    """Open the parts folder for this job (its digest is the same for every rank: what the parts
    hold, never who computes them); its parts as cut by the run that opened it (sized for its ranks),
    those finished already, and whether this run opened it."""
    digest = parts.job_digest({
        "recipe": meta["recipe"], "part_size": settings.part_size, "dtype": meta["dtype"], "root": str(listing.root),
        "rows": [[listing.paths[i], int(listing.file_size[i]), int(listing.file_mtime_ns[i])] for i in plan.job_rows]})
    n_rows = len(plan.job_rows)
    part_plan = parts.plan_parts(parts_dir, digest, n_rows, settings.part_size_for(n_rows, rank))
    mine = rank.parts(part_plan.n_parts)
    job = parts.Job(digest, part_plan.n_parts, part_plan.part_size, meta, rank.count, settings.part_size)
    done, discarded, created = parts.open_job(parts_dir, job, listing, plan.job_rows, plan.kept, mine,
                                              replace=not rank.sharded)
    if discarded:
        result.notes.append("discarded the parts of an earlier interrupted run made with other settings")
    return part_plan, done, created


def _file_meta(recipe: dict, winfo, listing, settings: Settings, dtype: str) -> dict:
    import h5py

    from cnncodes import __version__

    return {
        "recipe": recipe, "backbone": recipe["backbone"], "weights": winfo.as_dict(), "taps": recipe["taps"],
        "preprocess": recipe["preprocess"], "class_names": listing.class_names, "image_root": str(listing.root),
        "versions": {"cnncodes": __version__, **installed_versions("torch", "torchvision"), "h5py": h5py.__version__,
                     **installed_versions("openvino")},
        "precision": settings.precision, "device": settings.device.type, "dtype": dtype,
    }


def inference_setup(backbone: str = DEFAULT_BACKBONE, layers=("penultimate",), batch_size: int | None = None,
                    device: str = "auto", precision: str = "auto", weights: str | None = None):
    """The extraction's forward pass with its defaults, for benchmarks and tests: (computer, batch size,
    description)."""
    bb = get_backbone(backbone)
    settings = Settings.of(RunOptions(device, precision, batch_size, progress=False))
    prep, winfo = preprocess_config(bb), locate_weights(bb, weights)
    network = prepare(bb, winfo, list(layers), "avg", prep, MAX_UNPOOLED_DIM, settings.device)
    computer = make_computer(network, prep, settings.device, settings.precision, settings.forward_batch, settings.streams)
    passes = f" in passes of {settings.forward_batch}" if settings.forward_batch < settings.batch_size else ""
    return computer, settings.batch_size, f"{computer.describe()}, batch {settings.batch_size}{passes}"
