"""The reader side of the run loop: batches of image rows in, decoded uint8 batches out, in order.

Worker processes (a process pool, forked) only decode, with PIL and NumPy, into shared slots (``Slots``);
the main process runs the network, which on the CPU is OpenVINO's own multi-stream inference, so no
worker holds a compiled model, and no process of a warm run loads torch. The workers start decoding as
soon as ``decoded_batches`` is called, so the caller can prepare the network meanwhile: for a fresh job,
before the network is even built (``Decoders``), up to ``PREFETCH_BYTES`` of images ahead. Where torch is
loaded (finetune's DataLoader workers) it runs with one thread: GNU OpenMP deadlocks in a forked child
whose parent already ran a parallel region, and more threads would only compete with the forward pass.
"""
from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from . import parts
from .plan import batches_of
from .images import ImageDataset
from .reader import ImageList

# (uint8 images [B x views, 3, H, W], an image's views side by side, ok flags [B], error messages). NumPy, not
# tensors: tensors would cross from the workers as shared file descriptors, whose sender thread prints tracebacks
# when Ctrl-C stops a run.
Decoded = tuple[np.ndarray, np.ndarray, list[str]]
# Decoded images held ahead, all workers together (64 MiB: 445 images at 224 x 224): enough to keep the
# decoders busy while the network is built and loaded (see bench/RESULTS.md), without holding much memory.
PREFETCH_BYTES = 64 << 20


def decoder_init(worker_id: int = 0, cpus: tuple[int, ...] = ()) -> None:
    """Set-up of every decode worker: one thread (see the module note), and no Ctrl-C: it reaches the
    whole process group, and only the main process handles it and stops the workers. With ``cpus``
    (``decoder_cpus``), worker i stays on CPU i, as OpenVINO keeps its streams on theirs (bench/RESULTS.md)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        os.sched_setaffinity(0, {cpus[worker_id % len(cpus)]})


def decoder_cpus(workers: int) -> tuple[int, ...]:
    """This process's CPUs when there is a decoder for each (where OpenVINO pins its streams too), else ()."""
    cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    return cpus if workers >= len(cpus) else ()


def fork_context() -> str | None:
    """"fork" where the platform has it (workers start at once, sharing the parent's memory), else None."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def stack_images(batch: list[tuple[np.ndarray, bool, str]]) -> Decoded:
    """Collate ``ImageDataset`` items (images, or each image's views): uint8 [B x views, 3, H, W], ok flags [B],
    error messages."""
    images, ok, errors = zip(*batch)
    stacked = np.stack(images)
    return stacked.reshape(-1, *stacked.shape[-3:]), np.array(ok, dtype=bool), list(errors)


def decoded_batches(dataset: ImageDataset, batches: list[list[int]], workers: int) -> Iterator[Decoded]:
    """The rows of ``batches`` (non-empty) decoded, in order; with ``workers`` > 0 decoding starts now.
    A batch is valid until the next one is asked for: forked workers decode into shared slots (``Slots``)."""
    if workers == 0:
        return (stack_images([dataset[i] for i in rows]) for rows in batches)
    size = max(map(len, batches)) * (dataset.views or 1)  # decoded crops in the largest batch
    ahead = max(2, PREFETCH_BYTES // (3 * dataset.crop * dataset.crop * size * workers)) * workers
    context = fork_context()
    # spawned workers would not share the slots: their batches cross pickled
    slots = Slots(dataset, ahead + 2, size) if context else None
    return Decoding(dataset, slots, batches, workers, ahead, context or "spawn")


class Decoding:
    """Batches decoded by a pool of ``workers`` processes, at most ``ahead`` of them in flight, yielded in order.
    The pool stops when the batches are done, or when this is dropped (a job that turned out otherwise, an
    error, Ctrl-C); a worker that dies fails the run (``BrokenProcessPool``) instead of hanging it.
    The workers add up their CPU time (``cost``), and ``confine`` moves decoding onto fewer cores (cores.py)."""

    def __init__(self, dataset: ImageDataset, slots: Slots | None, batches: list[list[int]], workers: int,
                 ahead: int, context: str):
        ctx = multiprocessing.get_context(context)
        cpus = decoder_cpus(workers)
        self.slots, self.todo, self.running, self.workers = slots, iter(enumerate(batches)), deque(), workers
        self.shared, self.submitted_all = Shared(ctx, workers), False
        self.pool = ProcessPoolExecutor(workers, ctx, initializer=_worker_init,
                                        initargs=(dataset, slots, ctx.Value("i", 0), cpus, self.shared))
        for _ in range(ahead):
            self._submit()

    def cost(self) -> tuple[float, int]:
        """(CPU seconds, images) the workers have spent decoding so far."""
        with self.shared.cost.get_lock():
            seconds, images = self.shared.cost[:]
        return seconds, int(images)

    def confine(self, cores: int) -> None:
        """From their next batch on, at most ``cores`` workers decode at a time, all on the last ``cores`` of this
        process's CPUs (the network's streams take the others); 0: every worker, where it started."""
        self.shared.cores.value = cores

    def decoded_all(self) -> bool:
        """Whether every batch is decoded (some may still wait to be taken)."""
        return self.submitted_all and (not self.running or self.running[-1].done()) and all(
            future.done() for future in self.running)

    def _submit(self) -> None:
        item = next(self.todo, None)
        if item is not None:
            self.running.append(self.pool.submit(_decode_batch, *item))
        else:
            self.submitted_all = True

    def __iter__(self) -> Decoding:
        return self

    def __next__(self) -> Decoded:
        if not self.running:
            self.close()
            raise StopIteration
        try:
            done = self.running.popleft().result()
        except BaseException:
            self.close()
            raise
        self._submit()  # into the slot of a batch the caller has moved past (see Slots)
        return self.slots.batch(*done) if self.slots is not None else done

    def close(self) -> None:
        """Cancel the batches not started and wait for the ones being decoded (one per worker, short): a pool left
        shutting down races the interpreter's exit, which then prints a traceback (Bad file descriptor)."""
        self.running.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        if hasattr(self, "pool"):
            self.close()


class Shared:
    """What the main process and its decode workers share: the workers' CPU seconds and images decoded (``cost``),
    the cores they are confined to (``cores``, 0: none), and for k cores a gate with k permits (``gates[k]``)."""

    def __init__(self, ctx, workers: int):
        self.cost, self.cores = ctx.Array("d", 2), ctx.Value("i", 0, lock=False)
        self.gates = [None] + [ctx.Semaphore(k) for k in range(1, workers + 1)]
        self.cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()


_WORKER: tuple = ()  # a decode worker's (dataset, slots, shared), set by _worker_init
_PLACED: list = [0, None]  # the confinement a worker has applied to itself, and its CPUs before any


def _worker_init(dataset: ImageDataset, slots: Slots | None, counter, cpus: tuple[int, ...], shared: Shared) -> None:
    global _WORKER
    _die_with_parent()
    with counter.get_lock():
        worker_id, counter.value = counter.value, counter.value + 1
    decoder_init(worker_id, cpus)
    _WORKER = (dataset, slots, shared)
    _PLACED[1] = os.sched_getaffinity(0) if shared.cpus else None


def _die_with_parent() -> None:
    """A pool worker waits for its next batch forever, even once the main process is gone (killed): on Linux the
    kernel ends it with its parent (PR_SET_PDEATHSIG); elsewhere it stays until its queue closes."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _decode_batch(n: int, rows: list[int]):
    """In a worker: batch ``n`` decoded into its slot ((slot, rows, ok, errors)), or returned whole without slots;
    its CPU time is added to the shared cost."""
    dataset, slots, shared = _WORKER
    started = time.process_time()
    cores = shared.cores.value
    with shared.gates[cores] if 0 < cores < len(shared.gates) else contextlib.nullcontext():  # a permit a core
        _place(shared, cores)
        done = stack_images([dataset[i] for i in rows]) if slots is None else slots.__getitems__([(n, i) for i in rows])
    spent = time.process_time() - started
    with shared.cost.get_lock():
        shared.cost[0] += spent
        shared.cost[1] += len(rows)
    return done


def _place(shared: Shared, cores: int) -> None:
    """Move this worker onto the last ``cores`` CPUs, or back where it started (0), when that changed
    (``Decoding.confine``)."""
    if cores != _PLACED[0] and shared.cpus:
        os.sched_setaffinity(0, shared.cpus[len(shared.cpus) - cores:] if cores else _PLACED[1])
        _PLACED[0] = cores


class Slots:
    """Decoded batches in shared memory that forked workers write in place, so a batch crosses to the main
    process as its slot number instead of a pickled copy (bench/RESULTS.md). ``Decoding`` hands batch n + k to a
    worker only after it has handed out batch n + k - (the batches in flight), so with two more slots
    than the batches in flight, batch n's slot is written again only after batch n + 2 has been handed out."""

    def __init__(self, dataset: ImageDataset, count: int, batch_size: int):
        """``batch_size``: crops in the largest batch (images x views)."""
        self.dataset, self.count, self.views = dataset, count, dataset.views or 1
        shape = (count, batch_size, 3, dataset.crop, dataset.crop)
        self.images = np.frombuffer(mmap.mmap(-1, int(np.prod(shape))), np.uint8).reshape(shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[int, int, np.ndarray, list[str]]:
        """Decode the rows of batch n (``keys``: (n, row) pairs) into its slot: (slot, rows, ok, errors)."""
        slot, ok, errors = keys[0][0] % self.count, [], []
        for k, (_, row) in enumerate(keys):
            image, good, error = self.dataset[row]
            crops = image.reshape(self.views, *image.shape[-3:])
            self.images[slot, k * self.views:(k + 1) * self.views] = crops
            ok.append(good)
            errors.append(error)
        return slot, len(keys), np.array(ok, dtype=bool), errors

    def batch(self, slot: int, n: int, ok: np.ndarray, errors: list[str]) -> Decoded:
        return self.images[slot, :n * self.views], ok, errors


class Decoders:
    """Decoding of the ``todo`` parts of a job (``job_rows`` of ``listing``), started now. Without ``todo``:
    this rank's parts of a fresh job, where no part is done yet."""

    def __init__(self, listing: ImageList, job_rows: list[int], prep: dict, part_size: int, batch_size: int,
                 workers: int, rank_parts, todo: list[int] | None = None, views: int = 1):
        self.job_rows, self.part_size = job_rows, part_size
        part_plan = parts.PartPlan(len(job_rows), part_size)
        self.todo = rank_parts(part_plan.n_parts) if todo is None else todo
        dataset = ImageDataset(listing.root, [listing.paths[i] for i in job_rows], prep["resize"], prep["crop"],
                               prep["interpolation"], views)
        rows = batches_of(part_plan, self.todo, batch_size)
        self.batches = decoded_batches(dataset, rows, workers) if rows else iter(())

    def covers(self, job_rows: list[int], part_size: int, todo: list[int]) -> bool:
        """Whether these are the decoders that the job as planned needs."""
        return job_rows == self.job_rows and part_size == self.part_size and todo == self.todo
