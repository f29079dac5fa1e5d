"""Weights resolution (file, embedded, hub cache, download, offline error) and the real embedded checkpoint."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from cnncodes import pipeline
from conftest import FAST
from cnncodes.extract import weights as W
from cnncodes.extract.backbones import get_backbone
from cnncodes.extract.images import preprocess
from cnncodes.extract.recipe import preprocess_config

MOBILENET = get_backbone("mobilenet_v2")


def embedded_path():
    path = W.embedded_checkpoint("mobilenet_v2")
    assert path is not None, "the embedded MobileNetV2 checkpoint is missing: run `make setup`"
    return path


def test_embedded_checkpoint_is_the_real_imagenet_mobilenet_v2():
    info = W.locate_weights(MOBILENET)
    assert info.source == "embedded" and info.name == "mobilenet_v2-b0353104.pth"
    assert info.sha256.startswith("b0353104")
    model = W.build_model(MOBILENET, info)
    prep = preprocess_config(MOBILENET)
    image = Image.fromarray(load_sample_image("china.jpg"))  # a real photo of a Chinese temple
    x = preprocess(image, prep["resize"], prep["crop"]).float() / 255
    x = (x - torch.tensor(prep["mean"]).view(3, 1, 1)) / torch.tensor(prep["std"]).view(3, 1, 1)
    with torch.inference_mode():
        top5 = model(x[None]).softmax(1)[0].topk(5).indices.tolist()
    names = [MOBILENET.class_names[i] for i in top5]
    assert {"palace", "monastery", "stupa", "pagoda", "bell cote"} & set(names[:2]), names


def test_default_extract_records_the_embedded_weights(image_tree, tmp_path):
    out = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), "--quiet", "--workers", "0",
                          "--resize", "72", "--crop", "64"]) == 0
    with h5py.File(out, "r") as h5:
        info = json.loads(h5.attrs["weights"])
        recipe = json.loads(h5.attrs["recipe"])
    assert info["source"] == "embedded" and info["sha256"].startswith("b0353104")
    assert recipe["weights_sha256"] == info["sha256"]


def test_weights_file_is_loaded_and_hashed(image_tree, tmp_path):
    model = W.build_model(MOBILENET, W.WeightsInfo(W.RANDOM, W.RANDOM, ""))
    ckpt = tmp_path / "my_mobilenet.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "codes.h5"
    args = ["extract", str(image_tree), "-o", str(out), "--weights", str(ckpt), "--quiet", "--workers", "0",
            "--resize", "72", "--crop", "64", "--precision", "fp32"]
    assert pipeline.main(args) == 0
    with h5py.File(out, "r") as h5:
        info = json.loads(h5.attrs["weights"])
        codes = h5["codes/penultimate"][()]
    assert info == {**info, "source": "file", "name": "my_mobilenet.pth", "sha256": W.sha256_of(ckpt)}
    random_out = tmp_path / "random.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(random_out), *FAST, "--workers", "0"]) == 0
    with h5py.File(random_out, "r") as h5:
        np.testing.assert_array_equal(h5["codes/penultimate"][()], codes)  # same seeded untrained network
        assert json.loads(h5.attrs["weights"])["source"] == "random"


def test_a_checkpoint_is_hashed_again_only_when_it_changes(tmp_path, monkeypatch):
    """The checkpoint's SHA-256 is remembered by its stat once the file has settled: an unchanged file is not read
    again (a planted digest comes back), a rewritten one is; with the cache off, or its memo damaged, every lookup
    hashes the file."""
    monkeypatch.setenv("CNNCODES_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    ckpt = tmp_path / "weights.pth"
    ckpt.write_bytes(b"first weights")
    changed = ckpt.stat().st_ctime_ns
    memo = tmp_path / "cache" / W.SHA256_MEMO
    monkeypatch.setattr(W.time, "time_ns", lambda: changed + W.SETTLED_NS)  # changed just now: not remembered
    assert W.checkpoint_sha256(ckpt) == W.sha256_of(ckpt) and not memo.exists()
    monkeypatch.setattr(W.time, "time_ns", lambda: changed + 2 * W.SETTLED_NS)
    assert W.checkpoint_sha256(ckpt) == W.sha256_of(ckpt)
    known = json.loads(memo.read_text())
    known[str(ckpt.resolve())][-1] = "planted"
    memo.write_text(json.dumps(known))
    assert W.checkpoint_sha256(ckpt) == "planted"  # not read again
    ckpt.write_bytes(b"other, longer weights")
    monkeypatch.setattr(W.time, "time_ns", lambda: ckpt.stat().st_ctime_ns + 2 * W.SETTLED_NS)
    assert W.checkpoint_sha256(ckpt) == W.sha256_of(ckpt) != "planted"
    memo.write_text("{damaged")
    assert W.checkpoint_sha256(ckpt) == W.sha256_of(ckpt)
    monkeypatch.setenv("CNNCODES_CACHE_DIR", "off")
    assert W.checkpoint_sha256(ckpt) == W.sha256_of(ckpt)


def test_wrong_architecture_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "resnet.pth"
    torch.save(W.build_model(get_backbone("resnet18"), W.WeightsInfo(W.RANDOM, W.RANDOM, "")).state_dict(), ckpt)
    info = W.locate_weights(MOBILENET, str(ckpt))
    with pytest.raises(W.WeightsNotFound, match="is not a mobilenet_v2 checkpoint"):
        W.build_model(MOBILENET, info)


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(image_tree, tmp_path, capsys):
    """A --weights file torch cannot read as weights (here text) is a usage error naming the file, not an internal
    error, and leaves no codes file."""
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint\n", encoding="utf-8")
    out = tmp_path / "codes.h5"
    code = pipeline.main(["extract", str(image_tree), "-o", str(out), "--weights", str(junk), "--quiet", "--workers",
                          "0", "--resize", "72", "--crop", "64", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code not in (0, 1) and f"{junk} is not a checkpoint torch can read" in err, (code, err)
    assert "internal error" not in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_hub_cache_is_used_when_nothing_is_embedded(monkeypatch):
    source = embedded_path()
    monkeypatch.setattr(W, "embedded_checkpoint", lambda name: None)
    cache = W.hub_checkpoint_dir()
    cache.mkdir(parents=True)
    shutil.copy(source, cache / "mobilenet_v2-b0353104.pth")
    info = W.locate_weights(MOBILENET)
    assert info.source == "hub-cache" and info.sha256.startswith("b0353104")


def test_corrupt_cached_checkpoint_is_detected():
    resnet = get_backbone("resnet18")
    cache = W.hub_checkpoint_dir()
    cache.mkdir(parents=True)
    (cache / resnet.checkpoint_name).write_bytes(b"half a download")
    with pytest.raises(W.WeightsNotFound, match="corrupt"):
        W.locate_weights(resnet)


def test_download_from_a_mirror_lands_in_the_hub_cache(monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(embedded_path(), mirror / "mobilenet_v2-b0353104.pth")
    monkeypatch.setattr(W, "embedded_checkpoint", lambda name: None)
    monkeypatch.setenv("CNNCODES_OFFLINE", "0")
    monkeypatch.setenv("CNNCODES_DOWNLOAD_BASE", mirror.as_uri())
    info = W.locate_weights(MOBILENET)
    assert info.source == "download"
    assert (W.hub_checkpoint_dir() / "mobilenet_v2-b0353104.pth").is_file()
    assert W.locate_weights(MOBILENET).source == "hub-cache"  # the second time it is cached


def test_failed_download_names_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCODES_OFFLINE", "0")
    monkeypatch.setenv("CNNCODES_DOWNLOAD_BASE", (tmp_path / "empty-mirror").as_uri())
    with pytest.raises(W.WeightsNotFound) as err:
        W.locate_weights(get_backbone("vgg16"))
    text = str(err.value)
    assert "download failed" in text and "vgg16-397923af.pth" in text and str(W.hub_checkpoint_dir()) in text


def test_offline_without_weights_exits_non_zero_naming_file_and_folder(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    code = pipeline.main(["extract", str(image_tree), "-o", str(out), "--backbone", "resnet50", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "resnet50-0676ba61.pth" in err and str(W.hub_checkpoint_dir()) in err and "--weights" in err
