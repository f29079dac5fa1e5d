"""The forward pass that turns uint8 image batches into codes, made as fast as the device allows.

On the CPU (fp32): BatchNorm folded into convolutions, channels_last, then a TorchScript trace
fused by oneDNN Graph (single-threaded MobileNetV2: 1.25x over a frozen module with
``optimize_for_inference``, which is the fallback, itself about 1.25x over eager), small batches
padded to the traced size so the compiled kernels are never rebuilt for a short last batch.
oneDNN Graph gets a traced *function*: its weights become graph constants, as freezing would
make them, without scripting each of the model's ~200 submodules (0.11 s instead of 0.7 s).
The kernels are compiled for the thread count the forward will run with: a forked worker must
not run kernels its parent compiled for several threads (GNU OpenMP deadlocks there).
On CUDA: autocast to bf16/fp16, pinned host memory and non-blocking copies. The codes are the same
up to float rounding (tests compare them with a hand-written eager forward).
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

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
                 precision: str, batch_size: int, threads: int | None = None):
        """``threads``: how many threads the forward will run with (default: this process's)."""
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1) * 255
        tap_model = _tap_model(model, taps).to(device).eval().to(memory_format=torch.channels_last)
        tap_model.requires_grad_(False)  # a private copy; weights without grad can be traced as constants
        self.compiled = ""
        if device.type == "cpu" and precision == "fp32":
            example = torch.zeros(batch_size, 3, preprocess["crop"], preprocess["crop"])
            with _num_threads(threads):
                tap_model, self.compiled = _script(tap_model, example.contiguous(memory_format=torch.channels_last))
        self.model = tap_model

    def describe(self) -> str:
        return f"{self.device.type} {self.precision} channels_last {self.compiled or 'eager'}"

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(images)
        if self.compiled and n < self.batch_size:  # the traced shape: no kernel rebuild for a short batch
            images = torch.cat([images, images.new_zeros((self.batch_size - n, *images.shape[1:]))])
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        x = x.contiguous(memory_format=torch.channels_last)
        reduced = self.precision in DTYPES
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=DTYPES.get(self.precision),
                                                     enabled=reduced):
            out = self.model(x)
        return {name: value[:n].float().cpu() for name, value in out.items()}


def _tap_model(model: torch.nn.Module, taps: list[Tap]) -> TapModel:
    """A tap model on a copy of ``model``, with BatchNorm folded into convolutions unless that hides a tapped node."""
    fused = copy.deepcopy(model)
    fold_batchnorm(fused)
    try:
        return TapModel(fused, taps)
    except ValueError:  # a tapped node was a BatchNorm, which folding removed
        return TapModel(copy.deepcopy(model), taps)


def _script(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.nn.Module | torch.jit.ScriptFunction, str]:
    """``model`` compiled for CPU inference: traced and fused by oneDNN Graph, or else traced, frozen
    and passed through ``optimize_for_inference``; each candidate must match the eager model.
    Returns it with how it was compiled ("" for the eager model, when both fail)."""
    probe = torch.rand_like(example) * 4 - 2
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings; the outputs are checked below
        expected = model(probe)
        for how, compile_ in (("torchscript-onednn-graph", _onednn_graph), ("torchscript-frozen", _frozen)):
            try:
                candidate = compile_(model, example, probe)
                got = candidate(probe)
            except Exception:  # a graph that cannot be traced, or that the passes cannot take
                continue
            if all(torch.allclose(expected[k], got[k], rtol=1e-3, atol=1e-4) for k in expected):
                return candidate, how
    return model, ""


def _onednn_graph(model: torch.nn.Module, example: torch.Tensor, warm_up: torch.Tensor) -> torch.jit.ScriptFunction:
    traced = torch.jit.trace(lambda x: model(x), example, strict=False, check_trace=False)
    was_enabled = torch._C._jit_llga_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:  # the profiling executor fuses and compiles on the first calls; the flag is only read then
        for _ in range(2):
            traced(warm_up)
    finally:
        torch.jit.enable_onednn_fusion(was_enabled)
    return traced


def _frozen(model: torch.nn.Module, example: torch.Tensor, warm_up: torch.Tensor) -> torch.jit.ScriptModule:
    traced = torch.jit.trace(model, example, strict=False, check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


@contextmanager
def _num_threads(threads: int | None):
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
