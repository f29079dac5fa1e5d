"""The forward pass that turns uint8 image batches into codes, made as fast as the device allows.

On the CPU (fp32): BatchNorm folded into convolutions, channels_last, then TorchScript trace +
freeze + optimize_for_inference (about 2x over eager on a 2-core AVX2 machine), small batches.
On CUDA: autocast to bf16/fp16, pinned host memory and non-blocking copies. The codes are the same
up to float rounding (tests compare them with a hand-written eager forward).
"""
from __future__ import annotations

import copy
import warnings

import torch

from .device import DTYPES
from .fusion import fold_batchnorm
from .taps import Tap, TapModel

# Small batches are fastest for CPU inference here (cache-resident activations); GPUs want large ones.
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 64}


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH_SIZE.get(device.type, 32)


class CodeComputer:
    """Callable: uint8 images [B, 3, H, W] -> {tap name: float32 CPU codes [B, dim]}."""

    def __init__(self, model: torch.nn.Module, taps: list[Tap], preprocess: dict, device: torch.device,
                 precision: str, batch_size: int):
        self.device, self.precision = device, precision
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1) * 255
        tap_model = _tap_model(model, taps).to(device).eval().to(memory_format=torch.channels_last)
        self.compiled = False
        if device.type == "cpu" and precision == "fp32":
            example = torch.zeros(batch_size, 3, preprocess["crop"], preprocess["crop"])
            tap_model, self.compiled = _script(tap_model, example.contiguous(memory_format=torch.channels_last))
        self.model = tap_model

    def describe(self) -> str:
        return f"{self.device.type} {self.precision} channels_last {'torchscript-frozen' if self.compiled else 'eager'}"

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        x = x.contiguous(memory_format=torch.channels_last)
        reduced = self.precision in DTYPES
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=DTYPES.get(self.precision),
                                                     enabled=reduced):
            out = self.model(x)
        return {name: value.float().cpu() for name, value in out.items()}


def _tap_model(model: torch.nn.Module, taps: list[Tap]) -> TapModel:
    """The tap model with BatchNorm folded into convolutions, unless that hides a tapped node."""
    fused = copy.deepcopy(model)
    fold_batchnorm(fused)
    try:
        return TapModel(fused, taps)
    except ValueError:  # a tapped node was a BatchNorm, which folding removed
        return TapModel(model, taps)


def _script(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.nn.Module, bool]:
    """TorchScript-freeze ``model`` for CPU inference; the eager model when tracing fails."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, strict=False, check_trace=False)  # verified below
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            probe = torch.rand_like(example) * 4 - 2
            expected, got = model(probe), scripted(probe)
        if all(torch.allclose(expected[k], got[k], rtol=1e-3, atol=1e-4) for k in expected):
            return scripted, True
    except Exception:  # some graphs / input sizes fail to trace or to run frozen: eager still works
        pass
    return model, False
