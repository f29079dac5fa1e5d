"""Decode the first images of a job while the network is being prepared.

Preparing the network (building it, loading the weights, folding BatchNorm, TorchScript tracing)
takes about a second of mostly single-threaded work, during which a core would sit idle. A
forked process decodes the first images into anonymous shared memory meanwhile; the workers,
forked later, take those rows from there instead of decoding them again. Images that failed or
were not reached are decoded by the workers as usual, so the codes never depend on timing.
"""
from __future__ import annotations

import mmap
import multiprocessing
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .batches import single_threaded_child
from .reader import ImageDataset

# Shared memory for early images: 64 MiB is about 440 images at 224 x 224, more than a second of decoding.
MAX_BYTES = 64 << 20
# Below the main process: decoding takes only the CPU time that preparing the network leaves idle.
NICENESS = 10


class EarlyDecoder:
    """A forked process decoding ``images[0], images[1], ...`` until stopped or ``MAX_BYTES`` is full."""

    def __init__(self, images: ImageDataset):
        self.images = images
        side = images.crop
        self.n = max(1, min(len(images), MAX_BYTES // (3 * side * side)))
        # MAP_SHARED | MAP_ANONYMOUS: inherited by forked children, not limited by the size of /dev/shm
        self._pixels = mmap.mmap(-1, self.n * 3 * side * side)
        self._decoded = mmap.mmap(-1, self.n)
        context = multiprocessing.get_context("fork")
        self._stop = context.Event()
        self._process = context.Process(target=self._decode, name="cnncodes-early-decoder", daemon=True)
        self._process.start()

    def _decode(self) -> None:
        single_threaded_child()
        os.nice(NICENESS)
        pixels, decoded = self._arrays()
        for i in range(self.n):
            if self._stop.is_set():
                return
            image, ok, _ = self.images[i]
            if ok:
                pixels[i] = image.numpy()
                decoded[i] = 1

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        side = self.images.crop
        pixels = np.frombuffer(self._pixels, dtype=np.uint8).reshape(self.n, 3, side, side)
        return pixels, np.frombuffer(self._decoded, dtype=np.uint8)

    def ready(self) -> int:
        """How many images are decoded so far."""
        return int(self._arrays()[1].sum())

    def stop(self) -> int:
        """Stop decoding (it ends within one image); returns how many images are ready."""
        self._stop.set()
        self._process.join()
        return self.ready()

    def dataset(self) -> PrefetchedImages:
        """Stops decoding; the images, served from shared memory where they are already decoded."""
        self.stop()
        return PrefetchedImages(self.images, *self._arrays())


class PrefetchedImages(Dataset):
    """``ImageDataset`` items, taken from the early decoder's shared memory when it decoded them."""

    def __init__(self, images: ImageDataset, pixels: np.ndarray, decoded: np.ndarray):
        self.images, self.pixels, self.decoded = images, pixels, decoded
        self.crop = images.crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool, str]:
        if i < len(self.decoded) and self.decoded[i]:
            return torch.from_numpy(self.pixels[i].copy()), True, ""
        return self.images[i]
