"""The reader side of the run loop: batches of image rows in, decoded uint8 batches out, in order.

Worker processes (DataLoader, forked) only decode; the main process runs the network, which on
the CPU is OpenVINO's own multi-stream inference, so no worker holds a compiled model. The
workers start decoding as soon as ``decoded_batches`` is called, so the caller can prepare the
network meanwhile. They run torch with one thread: GNU OpenMP deadlocks in a forked child whose
parent already ran a parallel region, and more threads would only compete with the forward pass.
"""
from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .reader import ImageDataset

# (uint8 images [B, 3, H, W], ok flags [B], error messages). NumPy, not tensors: tensors would cross from the
# workers as shared file descriptors, whose sender thread prints tracebacks when Ctrl-C stops a run.
Decoded = tuple[np.ndarray, np.ndarray, list[str]]
# Batches decoded ahead per worker: enough to cover preparing the network (on a rerun) without holding much memory.
PREFETCH_IMAGES = 64


def decoder_init(_worker_id: int = 0) -> None:
    """Set-up of every decode worker: one thread (see the module note), and no Ctrl-C: it reaches the
    whole process group, and only the main process handles it and stops the workers."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fork_context() -> str | None:
    """"fork" where the platform has it (workers start at once, sharing the parent's memory), else None."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def stack_images(batch: list[tuple[torch.Tensor, bool, str]]) -> Decoded:
    """Collate ``ImageDataset`` items: uint8 images [B, 3, H, W], ok flags [B], error messages."""
    images, ok, errors = zip(*batch)
    return torch.stack(images).numpy(), np.array(ok, dtype=bool), list(errors)


def decoded_batches(dataset: ImageDataset, batches: list[list[int]], workers: int) -> Iterator[Decoded]:
    """The rows of ``batches`` (non-empty) decoded, in order; with ``workers`` > 0 decoding starts now."""
    if workers == 0:
        return (stack_images([dataset[i] for i in rows]) for rows in batches)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=stack_images,
                        prefetch_factor=max(2, PREFETCH_IMAGES // len(batches[0])), worker_init_fn=decoder_init,
                        multiprocessing_context=fork_context())
    return iter(loader)
