"""The reader side of the run loop: batches of image rows in, decoded uint8 batches out, in order.

Worker processes (forked, fed from one queue) only decode, with PIL and NumPy, into shared slots (``Slots``);
the main process runs the network, which on the CPU is OpenVINO's own multi-stream inference, so no
worker holds a compiled model, and no process of a warm run loads torch. By default decoding and the network take
turns on the cores (``Decoding.in_turns``) rather than time-share them. The workers start decoding as
soon as ``decoded_batches`` is called, so the caller can prepare the network meanwhile: for a fresh job,
before the network is even built (``Decoders``), up to ``PREFETCH_BYTES`` of images ahead. Where torch is
loaded (finetune's DataLoader workers) it runs with one thread: GNU OpenMP deadlocks in a forked child
whose parent already ran a parallel region, and more threads would only compete with the forward pass.
"""
from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as wait_for_connections

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
    """Batches decoded by ``workers`` processes, at most ``ahead`` of them in flight, yielded in order. The workers
    take batches from one queue and each sends what it decoded down a pipe of its own: this process runs no
    threads for them (a ``ProcessPoolExecutor``'s two cost about 0.2 ms of CPU a batch: bench/RESULTS.md). They
    stop when the batches are done, or when this is dropped (a job that turned out otherwise, an error, Ctrl-C);
    a worker that dies fails the run (``BrokenProcessPool``) instead of hanging it."""

    def __init__(self, dataset: ImageDataset, slots: Slots | None, batches: list[list[int]], workers: int,
                 ahead: int, context: str):
        ctx = multiprocessing.get_context(context)
        cpus = decoder_cpus(workers)
        self.slots, self.todo, self.workers = slots, iter(enumerate(batches)), workers
        self.next, self.queued, self.decoded = 0, 0, {}  # the batch to hand out next; batches queued; n -> result
        self.go = ctx.Event()  # cleared: the workers wait before their next batch (``in_turns``)
        self.go.set()
        self.tasks, self.results, self.processes = ctx.SimpleQueue(), [], []
        for _ in range(min(workers, ahead)):  # the first worker starts on its batch while the next one forks
            self._queue()
        for worker_id in range(workers):
            results, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_decode_worker, name=f"cnncodes-decoder-{worker_id}", daemon=True,
                                  args=(dataset, slots, worker_id, cpus, self.go, self.tasks, sender))
            process.start()
            sender.close()  # only its worker writes: the pipe ends (EOF) when the worker does
            self.results.append(results)
            self.processes.append(process)
        for _ in range(ahead - self.queued):
            self._queue()

    def in_turns(self) -> Iterator[Decoded]:
        """The batches, with decoding and the caller's forward pass taking turns on the cores instead of sharing
        them (a decoder and an inference stream on one core slow each other down: bench/RESULTS.md): the workers
        wait while decoded batches are left; once the next one is not decoded, every batch in flight (the
        look-ahead) is decoded on every core while the caller waits, and its forward passes have the cores."""
        self.go.clear()
        try:
            while True:
                if self.next < self.queued and not self._decoded(self.next, wait=False):
                    self.go.set()
                    # the caller goes on once the next batch and all but workers - 1 of those in flight, whichever
                    # they are, are decoded: a worker without a batch would leave its core idle meanwhile. A worker
                    # that takes a batch after the clear waits for the turn in which the caller needs it.
                    self._decoded(self.next, wait=True)
                    while self.queued - self.next - len(self.decoded) >= self.workers:
                        self._receive(wait=True)
                    self.go.clear()
                try:
                    batch = next(self)
                except StopIteration:
                    return
                yield batch
        finally:
            self.go.set()

    def _queue(self) -> None:
        item = next(self.todo, None)
        if item is not None:
            self.tasks.put(item)
            self.queued += 1

    def _decoded(self, last: int, wait: bool) -> bool:
        """Whether batches ``self.next`` to ``last`` are decoded, taking in what the workers sent; with ``wait``,
        once they are."""
        n = self.next
        while True:
            while n in self.decoded and n <= last:
                n += 1
            if n > last:
                return True
            if not self._receive(wait):
                return False

    def _receive(self, wait: bool) -> bool:
        """Take in what the workers have sent (with ``wait``, once one has sent something); whether any had."""
        ready = wait_for_connections(self.results, None if wait else 0)
        for results in ready:
            try:
                batch, value, error = results.recv()
            except (EOFError, OSError):
                raise BrokenProcessPool("a decode worker ended unexpectedly (killed, or out of memory?)") from None
            self.decoded[batch] = value, error
        return bool(ready)

    def __iter__(self) -> Decoding:
        return self

    def __next__(self) -> Decoded:
        if self.next == self.queued:
            self.close(wait=False)  # the workers exit beside the last forward passes
            raise StopIteration
        try:
            self._decoded(self.next, wait=True)
            done, error = self.decoded.pop(self.next)
            if error is not None:
                raise error
        except BaseException:
            self.close()
            raise
        self.next += 1
        self._queue()  # into the slot of a batch the caller has moved past (see Slots)
        return self.slots.batch(*done) if self.slots is not None else done

    def close(self, wait: bool = True) -> None:
        """Stop the workers at once: they hold nothing but batches that nobody will read. ``wait``: until they have
        exited (their memory given back), which the end of the batches leaves to whoever drops this."""
        self.go.set()
        self.queued = self.next
        for process in self.processes:
            process.kill()
        if not wait:
            return
        for process in self.processes:
            process.join()
        for results in self.results:
            results.close()
        self.tasks.close()
        self.processes, self.results = [], []

    def __del__(self) -> None:
        if hasattr(self, "processes"):
            self.close()


def _decode_worker(dataset: ImageDataset, slots: Slots | None, worker_id: int, cpus: tuple[int, ...], go, tasks,
                   results) -> None:
    """A decode worker: the batches it takes from ``tasks``, decoded, down ``results`` as (n, decoded, error)."""
    _die_with_parent()
    decoder_init(worker_id, cpus)
    while True:
        n, rows = tasks.get()
        go.wait()  # the decoders' turn (``Decoding.in_turns``)
        try:
            results.send((n, _decode_batch(dataset, slots, n, rows), None))
        except Exception as err:  # noqa: BLE001 - raised in the main process when it reaches batch n
            results.send((n, None, err if _picklable(err) else RuntimeError(repr(err))))


def _picklable(err: BaseException) -> bool:
    """Whether ``err`` can cross to the main process as itself."""
    try:
        pickle.dumps(err)
        return True
    except Exception:  # noqa: BLE001
        return False


def _die_with_parent() -> None:
    """A decode worker waits for its next batch forever, even once the main process is gone (killed): on Linux the
    kernel ends it with its parent (PR_SET_PDEATHSIG); elsewhere it stays until its queue closes."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _decode_batch(dataset: ImageDataset, slots: Slots | None, n: int, rows: list[int]):
    """Batch ``n`` decoded into its slot ((slot, rows, ok, errors)), or returned whole without slots."""
    if slots is None:
        return stack_images([dataset[i] for i in rows])
    return slots.__getitems__([(n, i) for i in rows])


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
