"""Where the work runs: batches of image rows in, (codes, ok, errors) out, in order.

On the CPU each worker process both decodes a batch and runs the forward pass on it, with one
thread. The workers are forked after the model is prepared, so they share its memory and its
compiled kernels. N single-threaded streams beat one N-threaded forward fed by decode workers:
no thread waits at a barrier for a sibling that a decoder has preempted (measured on 2 cores:
about 1.5x end to end). A forked child must stay single-threaded: GNU OpenMP deadlocks in a child
whose parent already ran a parallel region. On a GPU the workers only decode and the main
process feeds the device. With no workers, or where processes cannot be forked, the main
process computes with all its threads.
"""
from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .inference import CodeComputer
from .reader import ImageDataset

# codes per tap [B, dim], ok flags [B], error messages. NumPy, not tensors: tensors would cross from the
# workers as shared file descriptors, whose sender thread prints tracebacks when Ctrl-C stops a run.
Batch = tuple[dict[str, np.ndarray], np.ndarray, list[str]]


def forward_threads(device: torch.device, workers: int) -> int | None:
    """Threads the forward pass runs with: 1 in forked CPU streams, else None (the process's)."""
    return 1 if _streams(device, workers) else None


def can_fork() -> bool:
    """Whether child processes can be forked here (and so share the parent's memory)."""
    return "fork" in multiprocessing.get_all_start_methods()


def single_threaded_child(_worker_id: int = 0) -> None:
    """Set-up of every forked child: one thread (see the module note), and no Ctrl-C: it reaches the
    whole process group, and only the main process handles it and stops the children."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _streams(device: torch.device, workers: int) -> bool:
    return workers > 0 and device.type == "cpu" and can_fork()


def computed_batches(computer: CodeComputer, dataset: ImageDataset, batches: list[list[int]],
                     workers: int) -> Iterator[Batch]:
    """Codes of ``dataset``'s rows, one item per entry of ``batches`` (non-empty), in order."""
    if workers == 0 or _streams(computer.device, workers):
        yield from DataLoader(_ComputedBatches(dataset, computer), batch_size=None, sampler=batches,
                              num_workers=workers, collate_fn=_as_is,
                              multiprocessing_context="fork" if workers else None,
                              worker_init_fn=single_threaded_child if workers else None)
    else:  # a GPU, or a CPU where processes cannot be forked: workers decode, the main process computes
        yield from _decoded_then_computed(computer, dataset, batches, workers, pin=computer.device.type == "cuda")


def stack_images(batch: list[tuple[torch.Tensor, bool, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Collate ``ImageDataset`` items: uint8 images [B, 3, H, W], ok flags [B], error messages."""
    images, ok, errors = zip(*batch)
    return torch.stack(images), torch.tensor(ok), list(errors)


class _ComputedBatches(Dataset):
    """Index list -> (codes, ok, errors): decodes and computes in whichever process asks."""

    def __init__(self, images: ImageDataset, computer: CodeComputer):
        self.images, self.computer = images, computer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> Batch:
        images, ok, errors = stack_images([self.images[i] for i in rows])
        return _numpy(self.computer(images)), ok.numpy(), errors


def _decoded_then_computed(computer: CodeComputer, dataset: ImageDataset, batches: list[list[int]], workers: int,
                           pin: bool) -> Iterator[Batch]:
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=stack_images, pin_memory=pin,
                        prefetch_factor=max(2, 64 // len(batches[0])), worker_init_fn=single_threaded_child)
    for images, ok, errors in loader:
        yield _numpy(computer(images)), ok.numpy(), errors


def _numpy(codes: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in codes.items()}


def _as_is(item):
    return item
