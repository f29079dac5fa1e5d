"""Splitting the cores between decoding and the forward pass (extract/cores.py): the rule, the decoders' side of it
(measured cost, confinement), and a split run's codes against a shared one's."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cnncodes.extract import batches, cores, extract_codes, open_codes
from cnncodes.extract.images import ImageDataset
from cnncodes.extract.reader import list_images
from conftest import make_tree


def test_a_split_is_chosen_where_both_sides_cost_about_the_same_and_only_where_it_beats_sharing():
    """Costs as measured on the 2-core Zen 5 (ms an image): bf16 decode 1.86 / forward 1.84 splits one and one,
    fp32's 3.30 forward shares; with more cores the split follows the costs' ratio."""
    assert cores.decoder_cores(2, 1.86e-3, 1.84e-3) == 1
    assert cores.decoder_cores(2, 1.86e-3, 3.30e-3) == 0
    assert cores.decoder_cores(1, 1e-3, 1e-3) == 0  # nothing to split
    assert cores.decoder_cores(2, 17.6e-3, 1.84e-3) == 0  # 12-megapixel photos: decoding dominates
    many = cores.decoder_cores(16, 1.86e-3, 3.30e-3)
    assert many == 6  # 6 decode at 3.2 images/ms, 10 run the network at 3.0: both above 16 shared cores' 2.85
    assert min(many / 1.86, (16 - many) / 3.30) > cores.SHARED_EFFICIENCY * 16 / (1.86 + 3.30)


def test_confined_decoders_still_give_the_serial_batches_and_report_their_cost(tmp_path, monkeypatch):
    """Confining the decoders mid-run (``confine(1)``, then back to every core) changes no batch, nor their order;
    the workers' CPU time an image is counted for every image."""
    tree = make_tree(tmp_path / "images", per_class=12)
    listing = list_images(tree)
    dataset = ImageDataset(listing.root, listing.paths, 72, 64)
    rows = [list(range(i, min(i + 2, len(listing)))) for i in range(0, len(listing), 2)]
    serial = [pixels.copy() for pixels, _, _ in batches.decoded_batches(dataset, rows, 0)]
    monkeypatch.setattr(batches, "PREFETCH_BYTES", 1)  # two batches ahead a worker: most are decoded after confine
    decoded = batches.decoded_batches(dataset, rows, workers=2)
    got = []
    for k, (pixels, _, _) in enumerate(decoded):
        got.append(pixels.copy())
        decoded.confine({1: 1, 7: 0}.get(k, decoded.shared.cores.value))
    assert len(got) == len(serial)
    for want, have in zip(serial, got):
        np.testing.assert_array_equal(have, want)
    seconds, images = decoded.cost()
    assert images == len(listing) and seconds > 0


def test_a_confined_worker_moves_to_the_last_cpus_and_back_where_it_started():
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    _SHARED[:] = [batches.Shared(ctx, 2)]  # shared with the worker as forked (it cannot be pickled)
    with ctx.Pool(1) as pool:
        before, confined, back = pool.apply(_placements)
    assert confined == set(_SHARED[0].cpus[-1:]) and back == before


_SHARED: list = []


def _placements():
    shared = _SHARED[0]
    batches._PLACED[:] = [0, os.sched_getaffinity(0)]
    batches._place(shared, 1)
    confined = os.sched_getaffinity(0)
    batches._place(shared, 0)
    return batches._PLACED[1], confined, os.sched_getaffinity(0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a split needs 2 CPUs; this machine gives 1")
@pytest.mark.parametrize("decided", [1, 0])
def test_a_run_that_measures_its_cores_gives_the_shared_runs_codes(tmp_path, monkeypatch, decided):
    """The first batches measure the forward pass on one stream alone; the rest run split (one core decoding, then
    every core for the network once all is decoded) or back on shared cores, as decided: the codes are the shared
    run's bit for bit, and the runtime says which."""
    tree = make_tree(tmp_path / "images", per_class=20)
    kwargs = dict(weights="random", resize=72, crop=64, precision="fp32", progress=False, device="cpu")
    shared = extract_codes(tree, tmp_path / "shared.h5", **kwargs)
    assert "decoding alone" not in shared.runtime  # 40 images: too few to measure
    measured = []
    monkeypatch.setattr(cores, "MIN_IMAGES", 0)
    monkeypatch.setattr(cores, "MIN_DECODED", 0)
    monkeypatch.setattr(cores, "PROBE_BATCHES", 3)  # of 10
    monkeypatch.setattr(cores, "decoder_cores",
                        lambda cpus, decode, forward: measured.append((decode, forward)) or decided)
    placed = extract_codes(tree, tmp_path / "placed.h5", **kwargs)
    cpus = len(os.sched_getaffinity(0))
    split = f"{cpus - 1} stream(s), decoding alone on 1 core(s)"
    assert (split in placed.runtime) if decided else placed.runtime.endswith(f"{cpus} stream(s)")
    assert len(measured) == 1 and all(0 < cost < 1 for cost in measured[0])
    a, b = open_codes(tmp_path / "shared.h5"), open_codes(tmp_path / "placed.h5")
    assert list(a.rows.paths) == list(b.rows.paths) and len(b.rows.paths) == 40
    np.testing.assert_array_equal(a.codes["penultimate"], b.codes["penultimate"])
