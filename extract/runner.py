"""Drive an extraction: plan the job, run the missing parts through the network, assemble the file."""
from __future__ import annotations

import gc
import os
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import codesfile, parts, tracecache
from .backbones import DEFAULT_BACKBONE, get_backbone
from .batches import can_fork, computed_batches, forward_threads
from .device import pick_device, pick_precision
from .inference import CodeComputer, default_batch_size
from .prefetch import EarlyDecoder
from .reader import ImageDataset, ImageList, list_images
from .recipe import make_recipe, preprocess_config
from .taps import MAX_UNPOOLED_DIM, resolve_taps
from .weights import build_model, locate_weights

DEFAULT_PART_SIZE = 512


class ExtractionError(RuntimeError):
    """The extraction cannot go on; the message says why and what to do."""


class ExtractionInterrupted(ExtractionError):
    """Stopped by the user (Ctrl-C); finished parts are kept for a resume."""


@dataclass
class ExtractResult:
    """What an extraction did."""

    path: Path
    n_images: int
    n_extracted: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False
    resumed_parts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Settings:
    """How to run (does not change the codes, except precision)."""

    device: torch.device
    precision: str
    batch_size: int
    workers: int
    part_size: int
    progress: bool


def default_workers(device: torch.device) -> int:
    """Worker processes: on the CPU one single-threaded stream per CPU (decode + forward; at most 16,
    each holds its own activations); on a GPU, decoders for the CPUs left after the main process
    (at least one, at most eight)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return min(16, cpus) if device.type == "cpu" else max(1, min(8, cpus - 1))


def extract_codes(source: str | os.PathLike, out: str | os.PathLike, *, backbone: str = DEFAULT_BACKBONE,
                  layers: tuple[str, ...] | list[str] = ("penultimate",), pool: str = "avg", weights: str | None = None,
                  device: str = "auto", precision: str = "auto", batch_size: int | None = None,
                  workers: int | None = None, part_size: int | None = None, resize: int | None = None,
                  crop: int | None = None, dtype: str = "float32", overwrite: bool = False, update: bool = False,
                  progress: bool = True, max_dim: int = MAX_UNPOOLED_DIM, expected_recipe: dict | None = None,
                  ) -> ExtractResult:
    """Extract ReLU'd codes of ``layers`` for every image under ``source`` into the HDF5 file ``out``.

    A killed run resumes from its finished parts when the same command is run again. An existing
    ``out`` is reused when its recipe and image set match, refused otherwise (``overwrite`` redoes
    it, ``update`` extracts only new and modified images). ``expected_recipe`` (from a trained model)
    makes a recipe that differs an error.
    """
    out = Path(out)
    _check_writable(out)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype must be float32 or float16, not {dtype!r}")
    listing = list_images(source)
    bb = get_backbone(backbone)
    prep = preprocess_config(bb, resize, crop)
    settings = _settings(device, precision, batch_size, workers, part_size, progress)
    with _gc_frozen():
        early = _early_decoder(out, listing, prep, settings, overwrite)
        try:
            return _extract(out, listing, early, bb, prep, settings, weights=weights, layers=layers, pool=pool,
                            max_dim=max_dim, dtype=dtype, overwrite=overwrite, update=update,
                            expected_recipe=expected_recipe)
        finally:
            if early is not None:
                early.stop()


def _settings(device: str, precision: str, batch_size: int | None, workers: int | None, part_size: int | None,
              progress: bool) -> Settings:
    """The options, with the defaults of the device filled in; parts hold whole batches."""
    dev = pick_device(device)
    bs = batch_size or default_batch_size(dev)
    part_size = max(bs, (part_size or DEFAULT_PART_SIZE) // bs * bs)
    return Settings(dev, pick_precision(precision, dev), bs, workers if workers is not None else default_workers(dev),
                    part_size, progress)


@contextmanager
def _gc_frozen():
    """Keep the objects that exist now (torch alone makes about 340,000) out of garbage collection
    while extracting: each full collection walks all of them (0.3 s here), and model building and
    tracing trigger several; forked workers also stop copying pages that collections would touch.
    Left alone if the caller froze objects already."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _extract(out: Path, listing: ImageList, early: EarlyDecoder | None, bb, prep: dict,
             settings: Settings, *, weights, layers, pool, max_dim, dtype, overwrite, update, expected_recipe,
             ) -> ExtractResult:
    winfo = locate_weights(bb, weights)
    taps, make_computer = _prepare_network(bb, winfo, layers, pool, prep, max_dim, settings)
    recipe = make_recipe(bb, winfo, taps, prep)
    if expected_recipe is not None:
        codesfile.check_recipe(expected_recipe, recipe, "the model")
    meta = _file_meta(recipe, winfo, listing, settings, dtype)

    kept, job_rows, notes = _plan(out, listing, recipe, overwrite, update)
    result = ExtractResult(out, len(listing), len(job_rows), notes=notes + _ignored_note(listing))
    if kept is not None and not job_rows and not notes:
        result.up_to_date = True
        result.failures = _failures_of(out)
        return result
    started = time.perf_counter()
    computer = make_computer()
    _remove_stale_temporaries(out)
    parts_dir = parts.parts_dir_for(out)
    plan = parts.PartPlan(len(job_rows), settings.part_size)
    identity = {"recipe": {k: recipe[k] for k in codesfile.RECIPE_KEYS}, "precision": settings.precision,
                "part_size": settings.part_size, "dtype": dtype, "root": str(listing.root),
                "rows": [[listing.paths[i], int(listing.file_size[i]), int(listing.file_mtime_ns[i])] for i in job_rows]}
    done, discarded = parts.open_job(parts_dir, parts.job_digest(identity), plan.n_parts)
    if discarded:
        result.notes.append("discarded the parts of an earlier interrupted run made with other settings")
    result.resumed_parts = len(done)
    if early is not None and job_rows == list(range(len(listing))):
        dataset = early.dataset()
    else:
        dataset = ImageDataset(listing.root, [listing.paths[i] for i in job_rows], prep["resize"], prep["crop"],
                               prep["interpolation"])
    need = _bytes_needed(len(listing), taps, dtype)
    _check_space(out, 2 * need, need, "the parts and the codes file")
    _run_parts(computer, dataset, plan, done, parts_dir, settings, dtype)
    _check_space(out, need, need, "the codes file")
    _assemble(out, listing, meta, taps, dtype, job_rows, plan, parts_dir, kept)
    result.seconds = time.perf_counter() - started
    result.failures = _failures_of(out)
    return result


def _early_decoder(out: Path, listing: ImageList, prep: dict, settings: Settings,
                   overwrite: bool) -> EarlyDecoder | None:
    """Start decoding the first images now, when the job will be all of them from the start (a new file)."""
    fresh = (overwrite or not out.exists()) and not parts.parts_dir_for(out).exists()
    if settings.workers == 0 or not fresh or not len(listing) or not can_fork():
        return None
    return EarlyDecoder(ImageDataset(listing.root, listing.paths, prep["resize"], prep["crop"], prep["interpolation"]))


def _prepare_network(bb, winfo, layers, pool: str, prep: dict, max_dim: int, settings: Settings):
    """The taps, and a function making the computer: from the trace cache when it holds this network
    (CPU fp32), else by building the model, whose trace then goes into the cache."""
    threads = forward_threads(settings.device, settings.workers)
    key = None
    if settings.device.type == "cpu" and settings.precision == "fp32":
        key = tracecache.trace_key(backbone=bb.name, weights=winfo.sha256 or winfo.source, layers=list(layers),
                                   pool=pool, crop=prep["crop"], max_dim=max_dim, batch_size=settings.batch_size)
    cached = tracecache.load(key) if key else None

    def from_model(model: torch.nn.Module, found: list) -> CodeComputer:
        computer = CodeComputer(model, found, prep, settings.device, settings.precision, settings.batch_size, threads)
        if key and computer.trace is not None:
            tracecache.store(key, tracecache.CachedTrace(computer.trace, found))
        return computer

    if cached is not None:
        return cached.taps, lambda: (CodeComputer.from_trace(cached.trace, prep, settings.batch_size, threads)
                                     or from_model(build_model(bb, winfo), cached.taps))
    model = build_model(bb, winfo)
    found = resolve_taps(bb, model, list(layers), pool, prep["crop"], max_dim)
    return found, lambda: from_model(model, found)


def _check_writable(out: Path) -> None:
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


def _remove_stale_temporaries(out: Path) -> None:
    """Delete half-assembled files (``.OUT.<pid>.tmp``) left by runs that were killed."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        pid = tmp.name[len(out.name) + 2:-4]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _bytes_needed(n_rows: int, taps, dtype: str) -> int:
    """Size of the codes of ``n_rows`` images, plus room for paths and HDF5 overhead."""
    return n_rows * (sum(t.dim for t in taps) * np.dtype(dtype).itemsize + 512) + (1 << 20)


def _check_space(out: Path, disk_need: int, file_need: int, what: str) -> None:
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


def _ignored_note(listing: ImageList) -> list[str]:
    if not listing.ignored:
        return []
    shown = ", ".join(listing.ignored[:3]) + (", ..." if len(listing.ignored) > 3 else "")
    return [f"ignored {len(listing.ignored)} file(s) whose names are not images: {shown}"]


def _file_meta(recipe: dict, winfo, listing: ImageList, settings: Settings, dtype: str) -> dict:
    import torchvision

    from . import __version__

    return {
        "recipe": recipe, "backbone": recipe["backbone"], "weights": winfo.as_dict(), "taps": recipe["taps"],
        "preprocess": recipe["preprocess"], "class_names": listing.class_names, "image_root": str(listing.root),
        "versions": {"cnncodes": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                     "h5py": h5py.__version__},
        "precision": settings.precision, "device": settings.device.type, "dtype": dtype,
    }


def _plan(out: Path, listing: ImageList, recipe: dict, overwrite: bool, update: bool):
    """Decide what to extract: returns (old rows to keep or None, job rows, notes)."""
    everything = list(range(len(listing)))
    if not out.exists() or overwrite:
        return None, everything, []
    if not codesfile.is_complete(out):
        raise ExtractionError(f"{out} exists and is not a complete codes file; choose another name or pass --overwrite")
    with h5py.File(out, "r") as h5:
        old_meta = codesfile.read_meta(h5)
        old_rows = codesfile.read_rows(h5)
    diff = codesfile.recipe_difference(recipe, old_meta.get("recipe", {}))
    if diff:
        raise codesfile.RecipeMismatch(
            f"{out} was made with another recipe:\n  " + "\n  ".join(diff)
            + "\nUse another output file, or --overwrite to replace it.")
    if old_meta.get("image_root") != str(listing.root) or old_meta.get("class_names") != listing.class_names:
        if not update:
            raise ExtractionError(
                f"{out} was made from {old_meta.get('image_root')} with classes {old_meta.get('class_names')}; "
                f"now {listing.root} has {listing.class_names}. Use --overwrite to redo it.")
    return _diff_image_sets(out, listing, old_rows, update)


def _diff_image_sets(out: Path, listing: ImageList, old: codesfile.Rows, update: bool):
    old_index = {p: i for i, p in enumerate(old.paths)}
    new_index = {p: i for i, p in enumerate(listing.paths)}
    added = [i for i, p in enumerate(listing.paths) if p not in old_index]
    removed = [p for p in old.paths if p not in new_index]
    modified = [i for i, p in enumerate(listing.paths) if p in old_index and (
        listing.file_size[i] != old.file_size[old_index[p]] or listing.file_mtime_ns[i] != old.file_mtime_ns[old_index[p]]
        or listing.splits[i] != old.split[old_index[p]] or listing.labels[i] != old.labels[old_index[p]])]
    if not (added or removed or modified):
        return {}, [], []
    summary = f"{len(added)} new, {len(removed)} removed, {len(modified)} modified"
    if not update:
        example = (listing.paths[added[0]] if added else removed[0] if removed else listing.paths[modified[0]])
        raise ExtractionError(
            f"the images changed since {out} was made: {summary} (e.g. {example}).\n"
            f"Use --update to extract only what is new or modified, or --overwrite to redo everything.")
    redo = sorted(set(added) | set(modified))
    redo_set = set(redo)
    kept = {i: old_index[p] for i, p in enumerate(listing.paths) if i not in redo_set}
    return kept, redo, [f"update: {summary}"]


def _batches(plan: parts.PartPlan, todo: list[int], batch_size: int) -> list[list[int]]:
    """Index batches that never cross a part boundary, so a part's codes do not depend on resumes."""
    out = []
    for part in todo:
        rows = plan.rows(part)
        out.extend(list(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))
    return out


def _run_parts(computer: CodeComputer, dataset: ImageDataset, plan: parts.PartPlan, done: set[int],
               parts_dir: Path, settings: Settings, dtype: str) -> None:
    todo = [p for p in range(plan.n_parts) if p not in done]
    if not todo:
        return
    batches = computed_batches(computer, dataset, _batches(plan, todo, settings.batch_size), settings.workers)
    total = sum(len(plan.rows(p)) for p in todo)
    bar = tqdm(total=total, unit="img", desc="extract", disable=not settings.progress, dynamic_ncols=True)
    pending = iter(todo)
    part, buffer = next(pending), _PartBuffer()
    n_failed = 0
    try:
        for codes, ok, errors in batches:
            buffer.add(codes, ok, errors, dtype)
            n_failed += int((~ok).sum())
            bar.update(len(errors))
            if n_failed:
                bar.set_postfix(failed=n_failed, refresh=False)
            if buffer.n_rows == len(plan.rows(part)):
                parts.write_part(parts.part_path(parts_dir, part), *buffer.finish())
                part, buffer = next(pending, None), _PartBuffer()
    except KeyboardInterrupt:
        finished = len(list(parts_dir.glob("part-*.npz")))
        raise ExtractionInterrupted(
            f"interrupted: {finished} of {plan.n_parts} parts are saved in {parts_dir}; "
            f"run the same command again to resume") from None
    finally:
        bar.close()


class _PartBuffer:
    """Accumulates the batches of one part."""

    def __init__(self):
        self.codes: dict[str, list[np.ndarray]] = {}
        self.ok: list[np.ndarray] = []
        self.errors: list[str] = []

    @property
    def n_rows(self) -> int:
        return len(self.errors)

    def add(self, codes: dict[str, np.ndarray], ok: np.ndarray, errors: list[str], dtype: str) -> None:
        for name, value in codes.items():
            array = value.astype(dtype, copy=True)
            array[~ok] = np.nan  # a failed image has no codes; NaN makes that impossible to miss
            self.codes.setdefault(name, []).append(array)
        self.ok.append(ok)
        self.errors.extend(errors)

    def finish(self):
        return {k: np.concatenate(v) for k, v in self.codes.items()}, np.concatenate(self.ok), self.errors


def _assemble(out: Path, listing: ImageList, meta: dict, taps, dtype: str, job_rows: list[int],
              plan: parts.PartPlan, parts_dir: Path, kept: dict[int, int] | None) -> None:
    """Write the final codes file under a temporary name from the parts (and kept old rows), then rename."""
    n = len(listing)
    ok = np.zeros(n, dtype=bool)
    errors = np.array([""] * n, dtype=object)
    job_rows_arr = np.asarray(job_rows, dtype=np.int64)
    for part in range(plan.n_parts):
        part_ok, part_errors = parts.read_part_rows(parts.part_path(parts_dir, part))
        dest = job_rows_arr[plan.rows(part).start:plan.rows(part).stop]
        ok[dest], errors[dest] = part_ok, part_errors
    old = None
    if kept:
        with h5py.File(out, "r") as h5:
            old = codesfile.read_rows(h5)
        src = np.fromiter(kept.values(), dtype=np.int64)
        dest = np.fromiter(kept.keys(), dtype=np.int64)
        ok[dest], errors[dest] = old.ok[src], old.errors[src]
    rows = codesfile.Rows(labels=listing.labels, paths=np.array(listing.paths, dtype=object),
                          split=np.array(listing.splits, dtype=object), ok=ok, errors=errors,
                          file_size=listing.file_size, file_mtime_ns=listing.file_mtime_ns)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as h5:
            codesfile.write_attrs(h5, {**meta, "complete": False})
            codesfile.write_rows(h5, rows)
            for tap in taps:
                ds = codesfile.create_codes_dataset(h5, tap.name, n, tap.dim, dtype)
                _copy_part_codes(ds, tap.name, plan, parts_dir, job_rows_arr)
                if kept:
                    _copy_kept_codes(ds, out, tap.name, kept, plan.part_size)
            h5.attrs["complete"] = True
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(parts_dir, ignore_errors=True)


def _copy_part_codes(ds: h5py.Dataset, tap: str, plan: parts.PartPlan, parts_dir: Path, job_rows: np.ndarray) -> None:
    for part in range(plan.n_parts):
        rows = plan.rows(part)
        dest = job_rows[rows.start:rows.stop]
        values = parts.read_part_codes(parts.part_path(parts_dir, part), tap)
        _write_rows(ds, dest, values)


def _copy_kept_codes(ds: h5py.Dataset, old_path: Path, tap: str, kept: dict[int, int], block: int) -> None:
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


def _failures_of(out: Path) -> list[tuple[str, str]]:
    with h5py.File(out, "r") as h5:
        rows = codesfile.read_rows(h5)
    return [(p, e) for p, e, ok in zip(rows.paths, rows.errors, rows.ok) if not ok]


def inference_setup(backbone: str = DEFAULT_BACKBONE, layers=("penultimate",), batch_size: int | None = None,
                    device: str = "auto", precision: str = "auto", weights: str | None = None):
    """The extraction's forward pass with its defaults, for benchmarks: (computer, batch size, description)."""
    bb = get_backbone(backbone)
    settings = _settings(device, precision, batch_size, None, None, False)
    _, make_computer = _prepare_network(bb, locate_weights(bb, weights), layers, "avg", preprocess_config(bb),
                                        MAX_UNPOOLED_DIM, settings)
    computer, workers = make_computer(), settings.workers
    how = f"{workers} single-threaded worker streams" if computer.device.type == "cpu" else f"{workers} decode workers"
    return computer, settings.batch_size, f"{computer.describe()}, batch {settings.batch_size}, {how}"
