"""The parallel paths of extraction give the codes of the serial one: decode workers, inference streams."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from cnncodes import pipeline
from conftest import FAST, ROOT, make_tree
from cnncodes.extract import open_codes


def test_decode_workers_and_inference_streams_give_the_main_process_codes_in_order(tmp_path):
    """Forked decode workers after the parent ran a multi-threaded forward, several OpenVINO streams:
    no deadlock, rows in order across workers, streams and parts, failures on the right rows."""
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


def test_batches_come_back_in_order_from_concurrent_streams(tmp_path):
    """OpenVINO's streams finish batches out of order; the computer yields them in order, short last batch included.
    The reference comes from the compiled model's own call, then several maps run in the same process: before
    that call copied its input, this mix corrupted the heap in most runs (a crash, so a fresh process)."""
    tree = make_tree(tmp_path / "images", per_class=4)
    script = tmp_path / "streams_in_order.py"
    script.write_text(STREAMS_IN_ORDER.format(tree=str(tree)), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "in order: [3, 3, 2]"


STREAMS_IN_ORDER = """
import numpy as np
from cnncodes import pipeline
from cnncodes.extract import batches, runner
from cnncodes.extract.images import ImageDataset
from cnncodes.extract.reader import list_images


def main():
    listing = list_images({tree!r})
    images = ImageDataset(listing.root, listing.paths, 256, 224)  # inference_setup's preprocessing
    computer, _, _ = runner.inference_setup(layers=("block4",), weights="random", device="cpu", batch_size=3)
    assert computer.runtime == "openvino", computer.runtime
    computer.streams = 3
    rows = [[0, 1, 2], [3, 4, 5], [6, 7]]
    serial = [computer(images_)["block4"].numpy() for images_, _, _ in batches.decoded_batches(images, rows, 0)]
    for _ in range(3):
        mapped = list(computer.map(batches.decoded_batches(images, rows, workers=2)))
        for want, (codes, ok, errors) in zip(serial, mapped):
            np.testing.assert_allclose(codes["block4"], want, rtol=1e-5, atol=1e-6)
            assert ok.all() and errors == [""] * len(want)
    print("in order:", [len(c["block4"]) for c, _, _ in mapped])


if __name__ == "__main__":  # decode workers may start by forkserver, which imports this file
    pipeline.process_settings()
    main()
"""


def test_decoded_batches_from_shared_slots_match_the_serial_decode_when_slots_are_reused(tmp_path, monkeypatch):
    """Forked decoders write into a few shared slots, reused many times over: every batch, held until the next
    one is asked for, has its own rows' pixels, failures included; without fork, batches cross pickled."""
    from cnncodes.extract import batches
    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images

    tree = make_tree(tmp_path / "images", per_class=12)
    (tree / "dog" / "img_007.png").write_bytes(b"broken")
    listing = list_images(tree)
    images = ImageDataset(listing.root, listing.paths, 64, 56)
    rows = [list(range(i, min(i + 3, len(listing)))) for i in range(0, len(listing), 3)]  # 8 batches
    monkeypatch.setattr(batches, "PREFETCH_BYTES", 1)  # 2 batches ahead per worker: 6 slots for 8 batches
    serial = list(batches.decoded_batches(images, rows, 0))
    for context in ("fork", None):
        monkeypatch.setattr(batches, "fork_context", lambda: context)
        held = None
        for n, (pixels, ok, errors) in enumerate(batches.decoded_batches(images, rows, workers=2)):
            if held is not None:  # the previous batch is still intact now that this one has come
                np.testing.assert_array_equal(held, serial[n - 1][0])
            np.testing.assert_array_equal(pixels, serial[n][0])
            np.testing.assert_array_equal(ok, serial[n][1])
            assert errors == serial[n][2]
            held = pixels
        assert n == len(rows) - 1
    assert sum(not ok.all() for _, ok, _ in serial) == 1


def test_a_decoder_that_dies_or_raises_fails_the_run_instead_of_hanging_it(tmp_path):
    """A decode worker killed mid-batch (out of memory, say) fails the run with ``BrokenProcessPool``; an error
    raised in a worker reaches the caller as itself, at its batch, after the batches before it."""
    import signal
    import threading
    from concurrent.futures.process import BrokenProcessPool

    from cnncodes.extract import batches
    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images

    class Fails(ImageDataset):
        def __getitem__(self, i):
            if i == 5 and self.how == "dies":
                os.kill(os.getpid(), signal.SIGKILL)
            if i == 5:
                raise ZeroDivisionError("row 5")
            return super().__getitem__(i)

    listing = list_images(make_tree(tmp_path / "images", per_class=4))
    rows = [list(range(i, i + 2)) for i in range(0, len(listing), 2)]  # row 5 is in batch 2
    for how, error in (("dies", BrokenProcessPool), ("raises", ZeroDivisionError)):
        dataset = Fails(listing.root, listing.paths, 72, 64)
        dataset.how, got, raised = how, [], []

        def consume():
            try:
                got.extend(ok.all() for _, ok, _ in batches.decoded_batches(dataset, rows, workers=2))
            except Exception as err:  # noqa: BLE001 - the assertion below names it
                raised.append(err)
        consumer = threading.Thread(target=consume)
        consumer.start()
        consumer.join(timeout=60)
        assert not consumer.is_alive(), f"a worker that {how} hung the run"
        assert len(raised) == 1 and isinstance(raised[0], error), (how, raised)
        if how == "raises":
            assert got == [True, True] and "row 5" in str(raised[0])


def test_one_decoder_per_cpu_stays_on_its_cpu(monkeypatch):
    """With a decoder per CPU (where OpenVINO pins its streams too), decoder i is kept on CPU i; with fewer
    decoders, or ranks sharing the CPUs, none is pinned."""
    import multiprocessing

    from cnncodes.extract import batches

    cpus = tuple(sorted(os.sched_getaffinity(0)))
    assert batches.decoder_cpus(len(cpus)) == cpus and batches.decoder_cpus(len(cpus) + 1) == cpus
    assert batches.decoder_cpus(len(cpus) - 1) == ()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_affinity_after_init, (len(cpus) + 1, cpus)) == {cpus[1 % len(cpus)]}
        assert pool.apply(_affinity_after_init, (0, ())) == set(cpus)


def _affinity_after_init(worker_id, cpus):
    from cnncodes.extract import batches

    before = os.sched_getaffinity(0)
    batches.decoder_init(worker_id, cpus)
    after = os.sched_getaffinity(0)
    os.sched_setaffinity(0, before)
    return after


def test_decoding_in_turns_gives_the_serial_batches_and_keeps_the_workers_waiting_while_batches_are_left(
        tmp_path, monkeypatch):
    """``in_turns``: every batch is the serial decode's, in order, over several turns (a look-ahead of four
    batches, slots reused); whenever the caller holds a batch the workers wait (``go`` cleared), and they may go
    again once the batches are done or the caller stops early (a closed pool does not hang on a waiting worker)."""
    import threading

    from cnncodes.extract import batches
    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images

    tree = make_tree(tmp_path / "images", per_class=12)
    listing = list_images(tree)
    dataset = ImageDataset(listing.root, listing.paths, 72, 64)
    rows = [list(range(i, min(i + 2, len(listing)))) for i in range(0, len(listing), 2)]
    serial = [pixels.copy() for pixels, _, _ in batches.decoded_batches(dataset, rows, 0)]
    monkeypatch.setattr(batches, "PREFETCH_BYTES", 1)  # two batches ahead a worker: 12 batches take several turns
    decoded = batches.decoded_batches(dataset, rows, workers=2)
    got, waiting = [], []
    for pixels, _, _ in decoded.in_turns():
        got.append(pixels.copy())
        waiting.append(not decoded.go.is_set())
    assert len(got) == len(serial) and all(waiting) and decoded.go.is_set()
    for want, have in zip(serial, got):
        np.testing.assert_array_equal(have, want)

    stopped = batches.decoded_batches(dataset, rows, workers=2)
    turns = stopped.in_turns()
    next(turns)
    assert not stopped.go.is_set()
    turns.close()
    closing = threading.Thread(target=stopped.close)
    closing.start()
    closing.join(timeout=60)
    assert stopped.go.is_set() and not closing.is_alive()


def test_the_caller_takes_its_turn_while_the_last_batch_of_a_turn_is_still_decoded(tmp_path, monkeypatch):
    """At the end of a turn the caller does not wait for the last batch (with two workers the other core would
    idle): the last image of the turn is decoded only once the caller holds the first batch, and still decodes."""
    import multiprocessing

    from cnncodes.extract import batches
    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images

    caller_has_a_batch = multiprocessing.get_context("fork").Event()

    class LastWaitsForTheCaller(ImageDataset):
        def __getitem__(self, i):
            if i == len(self.paths) - 1 and not caller_has_a_batch.wait(timeout=60):
                return np.zeros((3, self.crop, self.crop), np.uint8), False, "the caller waited for this batch"
            return super().__getitem__(i)

    listing = list_images(make_tree(tmp_path / "images", per_class=4))
    dataset = LastWaitsForTheCaller(listing.root, listing.paths, 72, 64)
    rows = [list(range(i, i + 2)) for i in range(0, len(listing), 2)]
    monkeypatch.setattr(batches, "PREFETCH_BYTES", 1)  # two batches ahead a worker: the 4 batches are one turn
    decoded = batches.decoded_batches(dataset, rows, workers=2)
    got = []
    for pixels, ok, errors in decoded.in_turns():
        caller_has_a_batch.set()
        got.append((ok.copy(), errors))
    assert len(got) == len(rows) == 4
    assert all(ok.all() for ok, _ in got), [errors for _, errors in got]


def test_a_batch_taken_as_a_turn_ends_is_decoded_when_the_caller_needs_it(tmp_path, monkeypatch):
    """A worker that takes a batch just before the caller's turn begins waits for the decoders' next turn; where
    the caller needs that very batch at once (fewer batches in flight than workers), that turn comes. (It once
    did not: the turn was given back at once, before the worker had reached its wait.) The workers here pause
    after taking a batch, so that they reach their wait after the caller's turn has begun."""
    import threading
    import time
    from multiprocessing.queues import SimpleQueue

    from cnncodes.extract import batches
    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images

    take = SimpleQueue.get

    def take_then_pause(self):
        task = take(self)
        time.sleep(0.3)
        return task

    monkeypatch.setattr(SimpleQueue, "get", take_then_pause)  # in the forked workers
    listing = list_images(make_tree(tmp_path / "images", per_class=1))
    dataset = ImageDataset(listing.root, listing.paths, 72, 64)
    decoded = batches.decoded_batches(dataset, [[0, 1]], workers=2)  # one batch, two workers
    got: list = []
    caller = threading.Thread(target=lambda: got.extend(ok.copy() for _, ok, _ in decoded.in_turns()), daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the caller still waits for a batch that no worker decodes"
    assert len(got) == 1 and got[0].all()


def test_extraction_in_turns_gives_the_codes_of_shared_cores(tmp_path, monkeypatch):
    """Turns where a decoder and an OpenVINO stream sit on every core (not with eager PyTorch, nor more decoders
    than cores); taking turns or sharing the cores, each forced whatever this machine: the same codes, bit for
    bit."""
    from dataclasses import replace

    from cnncodes.extract import batches, extract_codes, runner
    from cnncodes.extract.recipe import RunOptions

    tree = make_tree(tmp_path / "images", per_class=20)
    kwargs = dict(weights="random", resize=72, crop=64, precision="fp32", progress=False, device="cpu", batch_size=2)
    cpus, decoding = len(os.sched_getaffinity(0)), object.__new__(batches.Decoding)
    settings = runner.Settings.of(RunOptions(device="cpu", progress=False))
    openvino, eager = (type("Computer", (), {"runtime": runtime})() for runtime in ("openvino", "eager"))
    filling = replace(settings, workers=cpus, streams=cpus)  # a decoder and a stream on every core
    assert runner.takes_turns(decoding, openvino, filling)
    assert not runner.takes_turns(decoding, eager, filling)
    assert not runner.takes_turns(decoding, openvino, replace(filling, workers=cpus + 1))
    asked = []
    for turns, name in ((True, "turns.h5"), (False, "shared.h5")):  # each path forced, whatever this machine
        monkeypatch.setattr(runner, "takes_turns", lambda *args, turns=turns: asked.append(turns) or turns)
        extract_codes(tree, tmp_path / name, **kwargs)
    assert asked == [True, False]
    a, b = open_codes(tmp_path / "turns.h5"), open_codes(tmp_path / "shared.h5")
    assert list(a.rows.paths) == list(b.rows.paths) and len(a.rows.paths) == 40
    np.testing.assert_array_equal(a.codes["penultimate"], b.codes["penultimate"])
