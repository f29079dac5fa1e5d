"""How a CPU extraction shares the cores between decoding and the forward pass.

By default every core runs a decoder and a single-threaded OpenVINO stream, which time-share it: each side then
spends 5-15% more CPU an image than alone (bench/RESULTS.md). Where an image costs about as much to decode as to
run through the network, a split runs faster: some cores only decode, the others only run the network.
``Placement`` decides at the start of a run from both costs measured in it: the decoders' CPU time an image
(``Decoding.cost``) and the forward pass's, on the run's first batches, computed by one stream on a core of its own.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from .batches import Decoding
from .inference import Batch, OpenVINOComputer

# A run on shared cores, as a fraction of the rate of a split whose sides are equally fast: its CPU an image
# against one decoder and one stream on their own cores (bf16, hymenoptera x20; bench/RESULTS.md).
SHARED_EFFICIENCY = 0.92
MIN_IMAGES = 1000  # smaller jobs keep the shared cores: measuring would not pay
PROBE_BATCHES = 24  # batches that measure the forward pass (a fresh compile's first passes are slower)
MIN_DECODED = 32  # images decoded before the decoders' cost counts as measured


def decoder_cores(cpus: int, decode_cost: float, forward_cost: float) -> int:
    """How many of ``cpus`` cores should only decode (the others only run the network), or 0 to share every core:
    the split with the best predicted rate, min(decoding, forward), where it beats the shared cores' rate.
    Costs: CPU seconds an image on one core."""
    best, best_rate = 0, SHARED_EFFICIENCY * cpus / (decode_cost + forward_cost)
    for cores in range(1, cpus):
        rate = min(cores / decode_cost, (cpus - cores) / forward_cost)
        if rate > best_rate:
            best, best_rate = cores, rate
    return best


def measures(decoded, workers: int, streams: int, cpus: int, n_images: int) -> bool:
    """Whether a run measures its costs to place decoding and the network (``Placement``): default decoders and
    streams (one of each per core) on 2 cores or more, and ``MIN_IMAGES`` to go. Its network is then compiled for
    one stream first."""
    return isinstance(decoded, Decoding) and cpus >= 2 and workers == streams == cpus and n_images >= MIN_IMAGES


class Placement:
    """``computer.map(decoded)``, on shared cores or split ones. Where the run ``measure``s, ``computer`` has one
    stream, which runs the first ``PROBE_BATCHES`` alone on the first core, the decoders confined to the others;
    the rest run as ``decoder_cores`` decides; a split ends once every image is decoded, when the network takes
    every core. ``computer``: the one that runs; ``describe``: the runtime and the placement."""

    def __init__(self, computer, decoded, cpus: int, measure: bool):
        self.computer, self.decoded, self.cpus = computer, decoded, cpus
        self.measure = measure and isinstance(computer, OpenVINOComputer)
        self.forward_cost: float | None = None
        self.summary, self.full = "", computer

    def __iter__(self) -> Iterator[Batch]:
        if not self.measure:
            yield from self.computer.map(self.decoded)
            return
        self.computer.decoding_cores = self.cpus - 1
        self.decoded.confine(self.cpus - 1)
        process, main, images = time.process_time(), time.thread_time(), 0
        for codes, ok, errors in self.computer.map(itertools.islice(self.decoded, PROBE_BATCHES)):
            images += len(ok)
            yield codes, ok, errors
        # the stream's threads: this process's CPU time but the main thread's
        self.forward_cost = ((time.process_time() - process) - (time.thread_time() - main)) / max(images, 1)
        seconds, decoded = self.decoded.cost()
        cores = decoder_cores(self.cpus, seconds / decoded, self.forward_cost) if decoded >= MIN_DECODED else 0
        self.decoded.confine(cores)  # first: the decoders take every core while the streams are compiled
        if self.cpus - cores != self.computer.streams:
            self.computer = self.computer.with_streams(self.cpus - cores, cores)
        self.summary = self.computer.describe()
        if cores:  # the decoders finish first (they ran ahead from the start): then the network takes every core
            self.full = self.computer
            yield from self.computer.map(self._until_decoded())
            self.computer = self.full
        yield from self.computer.map(self.decoded)

    def describe(self) -> str:
        """The runtime, and how the cores were placed."""
        return self.summary or self.computer.describe()

    def _until_decoded(self) -> Iterator:
        """The decoded batches until every batch is decoded; then the network is compiled for every core (``full``),
        on the cores the decoders leave, while the split's last batches run."""
        for batch in self.decoded:
            yield batch
            if self.decoded.decoded_all():
                self.full = self.computer.with_streams(self.cpus)
                self.summary = f"{self.summary}, then {self.cpus} stream(s)"
                return
