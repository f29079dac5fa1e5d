"""The eager PyTorch mapper (inference.py's fallback and the CUDA path), and the conversion of the tap model
to OpenVINO, checked against it: everything of the mapper that needs torch."""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import openvino_model
from .device import autocast_dtype
from .fusion import fold_batchnorm
from .inference import AGREEMENT, Batch, OpenVINOComputer, _compiled, check_agreement, mean_over_views
from .taps import Tap, TapModel

if TYPE_CHECKING:
    from .network import Network


class Normalized(nn.Module):
    """uint8 images [B, 3, H, W] -> the tap model's outputs on ImageNet-normalized floats."""

    def __init__(self, tap_model: TapModel, preprocess: dict):
        super().__init__()
        self.tap_model = tap_model
        self.register_buffer("mean", torch.tensor(preprocess["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocess["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.tap_model((images.float() - self.mean) / self.std)


class CodeComputer:
    """Eager PyTorch: callable uint8 images -> {tap: float32 CPU codes}; ``map`` runs a stream of batches, each
    image given as its ``views`` crops."""

    runtime = "eager"

    def __init__(self, module: Normalized, device: torch.device, precision: str, batch_size: int, note: str = "",
                 views: int = 1):
        device = torch.device(str(device))  # a device.Device names it
        self.device, self.precision, self.batch_size, self.note = device, precision, batch_size, note
        self.views = views
        self.module = module.to(device).eval().to(memory_format=torch.channels_last)

    def describe(self) -> str:
        return f"{self.device.type} {self.precision} {self.runtime}"

    def __call__(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        images = torch.as_tensor(images)
        if self.device.type == "cuda":
            images = images.pin_memory()
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.module(x)
        return {name: value.float().cpu() for name, value in out.items()}

    def map(self, batches: Iterable[tuple[np.ndarray, np.ndarray, list[str]]]) -> Iterator[Batch]:
        """(uint8 images x views, ok, errors) batches -> (codes, ok, errors), in order."""
        for images, ok, errors in batches:
            yield mean_over_views({k: v.numpy() for k, v in self(images).items()}, self.views), np.asarray(ok), errors


def _eager(model: nn.Module, taps: list[Tap], preprocess: dict) -> Normalized:
    return Normalized(_tap_model(model, taps), preprocess).eval().requires_grad_(False)


def _converted(module: Normalized, network: Network, preprocess: dict, precision: str, batch_size: int,
               streams: int, views: int) -> OpenVINOComputer:
    """Convert ``module``, compile it, and check it against the eager model on a probe batch."""
    crop = preprocess["crop"]
    example = torch.zeros(batch_size, 3, crop, crop, dtype=torch.uint8)
    probe = torch.randint(0, 256, (2, 3, crop, crop), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(probe)
    try:
        ov_model = openvino_model.converted(module, example, network.key, network.cache_meta())
        # the fixed-batch form written now from the entry's file is what the next run compiles
        computer = _compiled(lambda: ov_model, network.taps, precision, batch_size, streams, views, network.key,
                             openvino_model.ir_file(network.key))
        check_agreement(expected, computer(probe), AGREEMENT[precision])
    except BaseException:
        openvino_model.forget(network.key)  # never leave a conversion that failed its check for the next run
        raise
    return computer


def _tap_model(model: nn.Module, taps: list[Tap]) -> TapModel:
    """A tap model on a copy of ``model``, with BatchNorm folded into convolutions unless that hides a tapped node."""
    fused = copy.deepcopy(model).eval()
    fold_batchnorm(fused)
    try:
        return TapModel(fused, taps)
    except ValueError:  # a tapped node was a BatchNorm, which folding removed
        return TapModel(copy.deepcopy(model).eval(), taps)
