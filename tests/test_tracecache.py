"""The trace cache: a rerun loads the traced network instead of building it, with the same codes;
bad, stale or unwritable entries cost only time."""
from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from extract import extract_codes, open_codes, runner, tracecache
from extract.weights import build_model

SMALL = dict(weights="random", resize=72, crop=64, workers=0, progress=False, overwrite=True)


def entries() -> list:
    return sorted(tracecache.cache_dir().glob("*.pt"))


def codes_of(path, layer="penultimate") -> np.ndarray:
    return open_codes(path).codes[layer]


def no_model_building(monkeypatch):
    def refuse(*args):
        raise AssertionError("the model was built although the trace cache holds it")

    monkeypatch.setattr(runner, "build_model", refuse)


def test_a_rerun_loads_the_trace_and_gives_the_same_codes(image_tree, tmp_path, monkeypatch):
    extract_codes(image_tree, tmp_path / "first.h5", layers=("block4", "penultimate"), **SMALL)
    assert len(entries()) == 1
    no_model_building(monkeypatch)
    extract_codes(image_tree, tmp_path / "second.h5", layers=("block4", "penultimate"), **SMALL)
    for layer in ("block4", "penultimate"):
        np.testing.assert_allclose(codes_of(tmp_path / "second.h5", layer), codes_of(tmp_path / "first.h5", layer),
                                   rtol=1e-5, atol=1e-6)
    assert open_codes(tmp_path / "second.h5").meta["recipe"] == open_codes(tmp_path / "first.h5").meta["recipe"]


def test_other_layers_or_batch_sizes_are_other_entries(image_tree, tmp_path):
    extract_codes(image_tree, tmp_path / "a.h5", layers=("penultimate",), **SMALL)
    extract_codes(image_tree, tmp_path / "b.h5", layers=("block4",), **SMALL)
    extract_codes(image_tree, tmp_path / "c.h5", layers=("block4",), batch_size=3, **SMALL)
    assert len(entries()) == 3


def test_a_corrupt_entry_is_rebuilt(image_tree, tmp_path):
    extract_codes(image_tree, tmp_path / "a.h5", **SMALL)
    (entry,) = entries()
    entry.write_bytes(entry.read_bytes()[:1000])
    extract_codes(image_tree, tmp_path / "b.h5", **SMALL)
    np.testing.assert_allclose(codes_of(tmp_path / "b.h5"), codes_of(tmp_path / "a.h5"), rtol=1e-5, atol=1e-6)
    assert tracecache.load(entry.stem) is not None  # rewritten whole


def test_an_entry_that_no_longer_matches_its_outputs_is_not_used(image_tree, tmp_path, monkeypatch):
    extract_codes(image_tree, tmp_path / "a.h5", **SMALL)
    (entry,) = entries()
    cached = tracecache.load(entry.stem)
    cached.trace.expected = {k: v + 1 for k, v in cached.trace.expected.items()}
    tracecache.store(entry.stem, cached)
    built = []
    monkeypatch.setattr(runner, "build_model", lambda *a: built.append(1) or build_model(*a))
    extract_codes(image_tree, tmp_path / "b.h5", **SMALL)
    assert built == [1]
    np.testing.assert_allclose(codes_of(tmp_path / "b.h5"), codes_of(tmp_path / "a.h5"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("setting", ["off", "file"])
def test_no_cache_when_turned_off_or_unwritable(image_tree, tmp_path, monkeypatch, setting):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CNNCODES_CACHE_DIR", "off" if setting == "off" else str(blocker / "traces"))
    extract_codes(image_tree, tmp_path / "a.h5", **SMALL)
    extract_codes(image_tree, tmp_path / "b.h5", **SMALL)
    np.testing.assert_allclose(codes_of(tmp_path / "b.h5"), codes_of(tmp_path / "a.h5"), rtol=1e-5, atol=1e-6)
    assert tracecache.cache_dir() is None if setting == "off" else blocker.is_file()
    assert not list(tmp_path.rglob("*.pt"))


def test_oldest_entries_beyond_the_size_limit_and_stale_temporaries_are_deleted(image_tree, tmp_path, monkeypatch):
    extract_codes(image_tree, tmp_path / "a.h5", layers=("penultimate",), **SMALL)
    (old,) = entries()
    os.utime(old, (1, 1))
    monkeypatch.setattr(tracecache, "MAX_BYTES", old.stat().st_size + 1)
    killed, writing = tracecache.cache_dir() / f".{old.name}.999.tmp", tracecache.cache_dir() / f".{old.name}.998.tmp"
    killed.write_bytes(b"left by a run killed while it stored an entry")
    writing.write_bytes(b"being written by a live run")
    os.utime(killed, (1, 1))
    extract_codes(image_tree, tmp_path / "b.h5", layers=("block4",), **SMALL)
    assert len(entries()) == 1 and not old.exists()
    assert writing.exists() and not killed.exists()


def test_a_full_disk_while_storing_costs_nothing_but_the_entry(image_tree, tmp_path):
    extract_codes(image_tree, tmp_path / "a.h5", **SMALL)
    (entry,) = entries()
    cached = tracecache.load(entry.stem)
    entry.unlink()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # writes past 4 KiB fail with EFBIG
    try:
        tracecache.store(entry.stem, cached)  # TorchScript's own file writer would abort the process here
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tracecache.cache_dir().iterdir()) == []


def test_traces_of_big_networks_are_not_kept(image_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(tracecache, "MAX_ENTRY_BYTES", 512 << 10)  # MobileNetV2 up to block4: 0.8 MiB of weights
    extract_codes(image_tree, tmp_path / "a.h5", layers=("block4",), **SMALL)
    assert entries() == []
    monkeypatch.setattr(tracecache, "MAX_ENTRY_BYTES", 1 << 20)
    extract_codes(image_tree, tmp_path / "b.h5", layers=("block4",), **SMALL)
    assert len(entries()) == 1


def test_no_home_folder_means_no_cache(image_tree, tmp_path, monkeypatch):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("CNNCODES_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(tracecache.Path, "home", staticmethod(no_home))
    assert tracecache.cache_dir() is None
    extract_codes(image_tree, tmp_path / "a.h5", **SMALL)
    assert open_codes(tmp_path / "a.h5").rows.ok.all()


def test_an_entry_deleted_while_it_is_loaded_is_still_used(image_tree, tmp_path, monkeypatch):
    extract_codes(image_tree, tmp_path / "first.h5", **SMALL)
    touch = tracecache.os.utime

    def pruned_by_another_run(path, *args):  # a concurrent run's prune deletes the entry mid-load
        touch(path, *args)
        os.unlink(path)

    monkeypatch.setattr(tracecache.os, "utime", pruned_by_another_run)
    no_model_building(monkeypatch)  # what was read before the deletion is a whole entry
    extract_codes(image_tree, tmp_path / "second.h5", **SMALL)
    np.testing.assert_allclose(codes_of(tmp_path / "second.h5"), codes_of(tmp_path / "first.h5"), rtol=1e-5, atol=1e-6)
    assert entries() == []
