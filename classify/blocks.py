"""Row blocks of codes read from an open HDF5 file, side by side as float32 and aligned to its chunks: the streamed
fit, its CV sample and streamed predict read codes through them, never all at once."""
from __future__ import annotations

from typing import Iterator, Sequence

import h5py
import numpy as np

BLOCK_SHARE = 8  # one block of rows takes at most 1/BLOCK_SHARE of the budget (its copies fit beside it)
PIECES_PER_BATCH = 32  # a batch mixes this many pieces from random places: files are often sorted by class


class Blocks:
    """Row blocks of the codes of ``layers`` in an open file, side by side as float32, aligned to HDF5 chunks."""

    def __init__(self, h5: h5py.File, layers: Sequence[str], budget: int):
        self.datasets = [h5["codes"][t] for t in layers]
        self.n_rows = self.datasets[0].shape[0]
        dim = sum(d.shape[1] for d in self.datasets)
        chunk = max((d.chunks or (self.n_rows,))[0] for d in self.datasets)
        rows = max(1, budget // (BLOCK_SHARE * 4 * dim))
        self.rows = max(chunk, rows // chunk * chunk) if rows >= chunk else rows
        self.bounds = [(s, min(s + self.rows, self.n_rows)) for s in range(0, self.n_rows, self.rows)]

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = [d[start:stop] for d in self.datasets]
        return parts[0].astype(np.float32, copy=False) if len(parts) == 1 else np.hstack(parts, dtype=np.float32)

    def select(self, index: np.ndarray, order: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions in ``index``, codes) per block, for the sorted row numbers ``index``."""
        for b in range(len(self.bounds)) if order is None else order:
            start, stop = self.bounds[b]
            lo, hi = np.searchsorted(index, [start, stop])
            if hi > lo:
                yield np.arange(lo, hi), self.read(start, stop)[index[lo:hi] - start]

    def shuffled_batches(self, index: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions in ``index``, codes) in batches of about one block, each made of pieces of consecutive
        rows drawn from random places and shuffled together (files sorted by class would otherwise feed
        SGD one class at a time)."""
        piece = max(1, min(self.rows // PIECES_PER_BATCH, 4096))
        pieces = [np.arange(s, min(s + piece, len(index))) for s in range(0, len(index), piece)]
        per_batch = max(1, self.rows // piece)
        order = rng.permutation(len(pieces))
        for g in range(0, len(order), per_batch):
            parts = [(pieces[k], self.read(index[pieces[k][0]], index[pieces[k][-1]] + 1)
                      [index[pieces[k]] - index[pieces[k][0]]]) for k in order[g:g + per_batch]]
            pos = np.concatenate([pos for pos, _ in parts])
            mix = rng.permutation(len(pos))
            yield pos[mix], np.concatenate([X for _, X in parts])[mix]

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The codes of the sorted row numbers ``index``, in memory."""
        out = np.empty((len(index), sum(d.shape[1] for d in self.datasets)), np.float32)
        for pos, X in self.select(index):
            out[pos] = X
        return out
