"""Sharded extraction: torchrun ranks and --shard r/n each extract their own parts into the shared parts
folder; the file is assembled once, by the last shard or `cnncodes assemble`, and equals a single run's."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncodes import pipeline
from conftest import ROOT
from cnncodes.extract import codesfile, lock, parts
from cnncodes.extract.recipe import RunOptions
from cnncodes.extract.runner import Settings
from cnncodes.extract.shards import Shard, resolve
from fault_injection import make_images
from paused_run import PausedRun

ARGS = ["--weights", "random", "--resize", "40", "--crop", "32", "--device", "cpu", "--precision", "fp32",
        "--batch-size", "4", "--part-size", "4", "--quiet"]
N_IMAGES = 160  # 40 parts: a killed shard has parts left to do


@pytest.fixture(scope="module")
def images_and_reference(tmp_path_factory, _session_model_cache):
    """The images and their single-process extraction, shared by the module's tests."""
    work = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as env:  # as conftest's per-test isolation, for this module fixture
        env.setenv("TORCH_HOME", str(work / "torch_home"))
        env.setenv("CNNCODES_CACHE_DIR", str(_session_model_cache))
        env.setenv("CNNCODES_OFFLINE", "1")
        source = make_images(work / "images", N_IMAGES)
        reference = work / "reference.h5"
        assert extract(source, reference) == 0
    return source, reference


def extract(source: Path, out: Path, *extra: str) -> int:
    return pipeline.main(["extract", str(source), "-o", str(out), *ARGS, "--workers", "0", *extra])


def command(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipeline.py"), "extract", str(source), "-o", str(out), *ARGS,
            "--workers", "1", *extra]


def assert_same_rows(reference: Path, out: Path) -> None:
    """Row for row after ordering by path: codes close, ok / errors / labels equal, nothing duplicated."""
    a, b = codesfile.open_codes(reference), codesfile.open_codes(out)
    ia, ib = np.argsort(a.rows.paths), np.argsort(b.rows.paths)
    assert len(set(b.rows.paths)) == len(b.rows.paths) == len(a.rows.paths)
    assert list(a.rows.paths[ia]) == list(b.rows.paths[ib])
    for field in ("ok", "errors", "labels"):
        assert np.array_equal(getattr(a.rows, field)[ia], getattr(b.rows, field)[ib]), field
    assert a.codes.keys() == b.codes.keys()
    for tap in a.codes:
        np.testing.assert_allclose(a.codes[tap][ia], b.codes[tap][ib], rtol=1e-5, atol=1e-6)
    assert not parts.parts_dir_for(out).exists() and not lock.lock_path(out).exists()


def test_parts_of_n_ranks_are_disjoint_and_cover_every_part_whatever_n():
    for n_parts in (0, 1, 5, 40):
        for n in (1, 2, 3, 7, 50):
            owned = [p for r in range(n) for p in Shard(r, n).parts(n_parts)]
            assert sorted(owned) == list(range(n_parts))


def test_the_shard_comes_from_torchrun_or_shard_and_both_must_agree():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert resolve(None, env) == Shard(3, 4, 1, 2, "torchrun")
    assert resolve((3, 4), env).rank == 3
    with pytest.raises(ValueError, match="disagrees with torchrun's RANK=3 WORLD_SIZE=4"):
        resolve((0, 4), env)
    assert resolve((1, 2), {"WORLD_SIZE": "1"}) == Shard(1, 2, source="--shard")
    assert not resolve(None, {}).sharded


def test_ranks_on_one_machine_take_their_own_gpu_and_share_the_cpus():
    two = Shard(3, 4, local_rank=1, local_count=2)
    assert two.device("auto", cuda_count=2) == "cuda:1" and two.device("cuda", 1) == "cuda:0"
    assert two.device("cuda:0", 2) == "cuda:0" and two.device("auto", 0) == "auto"
    assert Shard().device("auto", 8) == "auto"  # one process (a Slurm task sees its own GPUs)
    cpus = len(os.sched_getaffinity(0))
    assert two.cpus() == max(1, cpus // 2) and Shard(0, 64, 0, 64).cpus() == max(1, cpus // 64)
    settings = Settings.of(RunOptions("cpu", "fp32"), two)  # what the rank's decoders and OpenVINO streams get
    assert settings.workers == settings.streams == min(16, max(1, cpus // 2))


def test_openvino_pins_its_threads_only_where_its_streams_fill_the_machine(monkeypatch):
    """OpenVINO pins stream threads from the first core on, so ranks sharing a machine would all be pinned
    onto the same cores; a process whose streams take every CPU keeps the pinning."""
    from cnncodes.extract import device, mapper
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.network import prepare
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.weights import RANDOM, WeightsInfo

    monkeypatch.setattr(device, "usable_cpus", lambda: 4)
    bb = get_backbone("mobilenet_v2")
    prep = {**preprocess_config(bb), "crop": 64}
    network = prepare(bb, WeightsInfo(RANDOM, RANDOM, ""), ["block4"], "avg", prep, 65536, torch.device("cpu"))

    def pinned(streams: int) -> bool:
        computer = mapper.make_computer(network, prep, torch.device("cpu"), "fp32", 2, streams)
        assert computer.runtime == "openvino", computer.note
        return computer.compiled.get_property("ENABLE_CPU_PINNING")

    assert pinned(4) and not pinned(2)


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_a_bad_shard_is_refused_in_one_line(tmp_path, capsys, shard):
    with pytest.raises(SystemExit) as exit_:
        pipeline.main(["extract", str(tmp_path), "-o", str(tmp_path / "x.h5"), f"--shard={shard}"])
    assert exit_.value.code == 2
    assert "argument --shard: must be R/N with 0 <= R < N" in capsys.readouterr().err


def test_torchrun_with_two_cpu_ranks_equals_one_process(images_and_reference, tmp_path):
    source, reference = images_and_reference
    out = tmp_path / "codes.h5"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "cnncodes.pipeline", *command(source, out)[2:]], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("shard 0/2 done") + run.stdout.count("shard 1/2 done") == 1, run.stdout
    assert run.stdout.count(f"wrote {out}") == 1 and "by shard" in run.stdout
    assert_same_rows(reference, out)


def test_shards_one_after_the_other_the_last_assembles_and_other_options_are_refused(images_and_reference, tmp_path,
                                                                                     capsys):
    source, reference = images_and_reference
    out = tmp_path / "codes.h5"
    assert extract(source, out, "--shard", "0/2") == 0
    said = capsys.readouterr().out
    assert not out.exists() and "shard 0/2 done: its 20 of the 40 parts are saved" in said
    assert f"is assembled when the last shard finishes, or by `cnncodes assemble {out}`" in said
    assert extract(source, out, "--shard", "1/2", "--crop", "36") == 2  # another recipe: refused, nothing lost
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "holds the parts of an extraction made otherwise (preprocess crop: 32 in the parts, 36 asked for)" in line
    assert extract(source, out, "--shard", "1/2", "--overwrite") == 2
    assert "--overwrite cannot be used by shards" in capsys.readouterr().err
    assert len(list(parts.parts_dir_for(out).glob("part-*.npz"))) == 20
    assert extract(source, out, "--shard", "1/2") == 0
    assert f"wrote {out}: {N_IMAGES} images, 80 extracted by shard 1/2" in capsys.readouterr().out
    assert_same_rows(reference, out)
    assert extract(source, out, "--shard", "0/2") == 0  # a late shard: the file is there, nothing to do
    assert "is up to date" in capsys.readouterr().out


def test_more_shards_than_images_each_finishes_and_the_last_assembles(tmp_path, capsys):
    source = make_images(tmp_path / "images", 3)
    reference, out = tmp_path / "reference.h5", tmp_path / "codes.h5"
    assert extract(source, reference) == 0
    for r in (4, 0, 2, 1):  # parts of one image: 0, 1 and 2 belong to shards 0, 1 and 2; 3 and 4 have none
        assert extract(source, out, "--shard", f"{r}/5") == 0
        assert out.exists() == (r == 1)
    said = capsys.readouterr().out
    assert "shard 4/5 done: its 0 of the 3 parts are saved; 3 part(s) of other shards are missing" in said
    assert f"wrote {out}: 3 images, 1 extracted by shard 1/5" in said
    assert_same_rows(reference, out)
    assert extract(source, out, "--shard", "3/5") == 0  # no part, and the file is there
    assert "is up to date" in capsys.readouterr().out


def test_every_rank_gets_a_part_when_there_are_as_many_images_as_ranks():
    """Parts shrink to the ranks' share (in whole batches where a share holds one), never past --part-size."""
    for n_rows in range(0, 70):
        for ranks in (1, 2, 3, 5, 8):
            for part_size, batch in ((512, 4), (8, 4), (16, 16), (3, 1)):
                size = parts.part_size_for(n_rows, ranks, part_size, batch)
                plan = parts.PartPlan(n_rows, size)
                assert 1 <= size <= part_size
                assert sum(bool(Shard(r, ranks).parts(plan.n_parts)) for r in range(ranks)) == min(ranks, n_rows)
                assert ranks > 1 or size == part_size  # one process keeps its parts as asked
    assert parts.part_size_for(20, 2, 512, 4) == 12 and parts.part_size_for(500, 2, 512, 32) == 256
    assert parts.part_size_for(25, 3, 512, 8) == 8 and parts.part_size_for(2000, 2, 512, 32) == 512


def extract_default_parts(source: Path, out: Path, *extra: str) -> int:
    """As ``extract``, with the default --part-size (512: more than the images)."""
    i = ARGS.index("--part-size")
    return pipeline.main(["extract", str(source), "-o", str(out), *ARGS[:i], *ARGS[i + 2:], "--workers", "0", *extra])


def test_two_shards_of_fewer_images_than_a_part_each_extract_a_part(tmp_path, capsys):
    source = make_images(tmp_path / "images", 20)
    reference, out = tmp_path / "reference.h5", tmp_path / "codes.h5"
    assert extract_default_parts(source, reference) == 0
    capsys.readouterr()
    assert extract_default_parts(source, out, "--shard", "0/2") == 0
    assert "shard 0/2 done: its 1 of the 2 parts are saved" in capsys.readouterr().out and not out.exists()
    assert extract_default_parts(source, out, "--shard", "1/2", "--part-size", "8") == 2  # the option, not the cut
    assert "(part size: 512 in the parts, 8 asked for)" in capsys.readouterr().err
    assert extract_default_parts(source, out, "--shard", "1/2") == 0
    assert f"wrote {out}: 20 images, 8 extracted by shard 1/2" in capsys.readouterr().out
    assert_same_rows(reference, out)


def test_a_run_resuming_the_parts_of_shards_counts_only_what_it_extracted(tmp_path, capsys):
    """One process finishes what shard 0/2 left (the parts as the shards cut them); the rows it reused are
    reported apart, and its rate counts only the rows it extracted."""
    from cnncodes.extract import extract_codes

    source = make_images(tmp_path / "images", 20)
    reference, out = tmp_path / "reference.h5", tmp_path / "codes.h5"
    assert extract_default_parts(source, reference) == 0
    assert extract_default_parts(source, out, "--shard", "0/2") == 0
    capsys.readouterr()
    assert extract_default_parts(source, out) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}: 20 images, 8 extracted in " in said and "12 reused: resumed from 1 saved part(s)" in said
    assert_same_rows(reference, out)

    out.unlink()
    assert extract_default_parts(source, out, "--shard", "0/2") == 0
    result = extract_codes(source, out, weights="random", resize=40, crop=32, device="cpu", precision="fp32",
                           batch_size=4, workers=0, progress=False)
    assert (result.n_extracted, result.n_reused, result.resumed_parts) == (8, 12, 1)
    assert result.images_per_second == pytest.approx(8 / result.seconds)
    assert_same_rows(reference, out)


def test_a_killed_shard_reruns_only_its_missing_parts_and_assemble_names_what_is_missing(
        images_and_reference, tmp_path, capsys, monkeypatch):
    source, reference = images_and_reference
    out = tmp_path / "codes.h5"
    parts_dir = parts.parts_dir_for(out)
    killed = PausedRun(command(source, out, "--shard", "1/2")[2:], start_new_session=True)  # after its first part
    os.killpg(killed.pid, signal.SIGKILL)  # the shard and its decode worker
    killed.finish(timeout=60)
    saved = {p: p.stat().st_ino for p in parts_dir.glob("part-*.npz")}
    assert list(saved) == [parts.part_path(parts_dir, 1)]

    assert pipeline.main(["assemble", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cnncodes assemble: error: cannot assemble {out} yet: {40 - len(saved)} of 40 parts "
                           "are missing") and "those of shard 0/2, 1/2" in line

    assert extract(source, out, "--shard", "1/2") == 0
    assert f"its 20 of the 40 parts are saved ({len(saved)} by an earlier run)" in capsys.readouterr().out
    assert {p: p.stat().st_ino for p in saved} == saved  # the saved parts were not computed again
    assert pipeline.main(["assemble", str(out)]) == 2
    assert "20 of 40 parts are missing (0, 2, 4, 6, 8, 10, 12, 14, ...), those of shard 0/2;" in capsys.readouterr().err

    from cnncodes.extract import writer

    def killed_while_assembling(*_args, **_kwargs):
        raise OSError("killed while assembling")

    with monkeypatch.context() as patch:  # the last shard dies after its parts, before the file is written
        patch.setattr(writer, "assemble", killed_while_assembling)
        assert extract(source, out, "--shard", "0/2") == 2
    assert not out.exists() and len(list(parts_dir.glob("part-*.npz"))) == 40
    capsys.readouterr()
    assert pipeline.main(["assemble", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert_same_rows(reference, out)
    assert pipeline.main(["assemble", str(out)]) == 0
    assert "is complete: nothing to assemble" in capsys.readouterr().out


def test_the_same_shard_twice_is_refused_while_other_shards_run_beside_it(images_and_reference, tmp_path, capsys):
    source, reference = images_and_reference
    out = tmp_path / "codes.h5"
    first = PausedRun(command(source, out, "--shard", "0/2")[2:])  # between parts: it holds shard 0, not the step
    try:
        assert extract(source, out, "--shard", "0/2") == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"shard 0 of {out} is being written by another extraction (process {first.pid} on " \
               f"{socket.gethostname()})" in line
        assert extract(source, out) == 2
        assert "being written by another extraction (the shards of a sharded extraction)" in capsys.readouterr().err
        assert extract(source, out, "--shard", "1/2") == 0  # another shard runs beside it
        assert "shard 1/2 done" in capsys.readouterr().out
    finally:
        code, said, err = first.finish()
    assert code == 0, err
    assert f"wrote {out}" in said
    assert_same_rows(reference, out)


def test_update_with_shards_extracts_only_the_new_images(tmp_path, capsys):
    source = make_images(tmp_path / "images", 6)
    out, reference = tmp_path / "codes.h5", tmp_path / "reference.h5"
    assert extract(source, out) == 0
    make_images(tmp_path / "more", 12, seed=1)
    for new in sorted((tmp_path / "more").rglob("img_000[6-9].png")) + sorted((tmp_path / "more").rglob("img_001*.png")):
        os.replace(new, source / new.parent.name / new.name)  # six new images
    assert extract(source, reference) == 0
    capsys.readouterr()
    assert extract(source, out, "--update", "--shard", "0/2") == 0
    assert extract(source, out, "--update", "--shard", "1/2") == 0
    said = capsys.readouterr().out
    assert "update: 6 new, 0 removed, 0 modified" in said and f"wrote {out}: 12 images" in said
    assert_same_rows(reference, out)
