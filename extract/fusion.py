"""Fold eval-mode BatchNorm into the preceding convolution: same outputs, one memory pass fewer per layer."""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fuse every Conv2d -> BatchNorm2d pair in place (model must be in eval mode); returns how many.

    Pairs are found where torchvision builds them: consecutive children of a Sequential
    (Conv2dNormActivation, MobileNetV2 blocks, ResNet downsample) and ``convN`` / ``bnN`` siblings
    (ResNet blocks and stems). Module names are kept, so layer names and taps do not change.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    pairs = conv_bn_pairs(model)
    for parent, conv_name, bn_name in pairs:
        setattr(parent, conv_name, fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name)))
        setattr(parent, bn_name, nn.Identity())
    return len(pairs)


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, BatchNorm name) of every Conv2d -> BatchNorm2d pair (with running statistics) of
    ``model``, found where torchvision builds them (see ``fold_batchnorm``)."""
    out = []
    for parent in model.modules():
        for conv_name, bn_name in _pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                out.append((parent, conv_name, bn_name))
    return out


def _pairs(parent: nn.Module) -> list[tuple[str, str]]:
    names = [name for name, _ in parent.named_children()]
    if isinstance(parent, nn.Sequential):
        return list(zip(names, names[1:]))
    return [(f"conv{s}", f"bn{s}") for s in ("", "1", "2", "3") if f"conv{s}" in names and f"bn{s}" in names]
