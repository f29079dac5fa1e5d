"""The parallel paths of extraction give the codes of the serial one: worker streams, early decoding."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import torch

import pipeline
from conftest import FAST, ROOT, make_tree
from extract import open_codes
from extract.prefetch import EarlyDecoder
from extract.reader import ImageDataset, list_images


def test_cpu_worker_streams_give_the_main_process_codes_in_order(tmp_path):
    """Forked single-threaded streams (decode + forward per worker) after the parent ran a multi-threaded
    forward: no deadlock, rows in order across workers and parts, failures on the right rows."""
    tree = make_tree(tmp_path / "images", per_class=9)
    (tree / "cat" / "img_004.png").write_bytes(b"not a png")  # a failure in the middle of a worker's batch
    reference, streamed = tmp_path / "main.h5", tmp_path / "streams.h5"
    common = ["extract", str(tree), *FAST, "--device", "cpu", "--batch-size", "2", "--part-size", "6"]
    assert pipeline.main([*common, "-o", str(reference), "--workers", "0"]) == 0
    done = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *common, "-o", str(streamed), "--workers", "3"],
                          capture_output=True, text=True, timeout=120)  # a deadlocked fork hangs
    assert done.returncode == 0, done.stderr
    a, b = open_codes(reference), open_codes(streamed)
    assert list(a.rows.paths) == list(b.rows.paths) and len(b.rows.paths) == 18
    np.testing.assert_array_equal(a.rows.ok, b.rows.ok)
    assert list(np.flatnonzero(~b.rows.ok)) == [list(b.rows.paths).index("cat/img_004.png")]
    np.testing.assert_allclose(b.codes["penultimate"][b.rows.ok], a.codes["penultimate"][a.rows.ok],
                               rtol=1e-4, atol=1e-5)
    assert np.isnan(b.codes["penultimate"][~b.rows.ok]).all()


def test_early_decoder_serves_decoded_rows_and_leaves_failures_to_the_workers(tmp_path):
    tree = make_tree(tmp_path / "images", per_class=5)
    (tree / "dog" / "img_002.png").write_bytes(b"")  # empty file: the decoder fails on it
    listing = list_images(tree)
    images = ImageDataset(listing.root, listing.paths, 72, 64)
    early = EarlyDecoder(images)
    deadline = time.monotonic() + 60
    while early.ready() < len(images) - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert early.ready() == len(images) - 1
    served = early.dataset()
    assert not early._process.is_alive()
    broken = listing.paths.index("dog/img_002.png")
    assert not served.decoded[broken] and served.decoded.sum() == len(images) - 1
    for i in range(len(images)):
        got, expected = served[i], images[i]
        assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    assert served[broken][1] is False and "empty file" in served[broken][2]


def test_early_decoder_stopped_at_once_leaves_every_row_to_the_workers(tmp_path):
    tree = make_tree(tmp_path / "images", per_class=3)
    listing = list_images(tree)
    images = ImageDataset(listing.root, listing.paths, 72, 64)
    early = EarlyDecoder(images)
    early._stop.set()  # before the child looks: it decodes at most the image it is on
    served = early.dataset()
    assert early.ready() <= 1
    for i in range(len(images)):
        assert torch.equal(served[i][0], images[i][0])


def test_decode_workers_feeding_the_main_process_give_the_same_codes(tmp_path):
    """The GPU arrangement (workers decode, the main process computes), run on the CPU."""
    from extract import batches, runner

    tree = make_tree(tmp_path / "images", per_class=4)
    listing = list_images(tree)
    images = ImageDataset(listing.root, listing.paths, 256, 224)  # inference_setup's preprocessing
    computer, _, _ = runner.inference_setup(layers=("block4",), weights="random", device="cpu", batch_size=3)
    rows = [[0, 1, 2], [3, 4, 5], [6, 7]]
    serial = list(batches.computed_batches(computer, images, rows, workers=0))
    decoded = list(batches._decoded_then_computed(computer, images, rows, workers=2, pin=False))
    assert len(serial) == len(decoded) == 3
    for (codes_a, ok_a, err_a), (codes_b, ok_b, err_b) in zip(serial, decoded):
        np.testing.assert_allclose(codes_a["block4"], codes_b["block4"], rtol=1e-5, atol=1e-6)
        assert ok_a.all() and ok_b.all() and err_a == err_b
    assert [len(c["block4"]) for c, _, _ in decoded] == [3, 3, 2]  # the short last batch, padded inside, cut back
