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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .device import DTYPES
from .fusion import fold_batchnorm
from .taps import Tap, TapModel

# Small batches are fastest for CPU inference here (cache-resident activations); GPUs want large ones.
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 64}


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH_SIZE.get(device.type, 32)


@dataclass
class Trace:
    """A tap model traced for one batch shape (BatchNorm folded, channels_last), with a probe batch
    and the eager model's outputs on it, which any compiled form must reproduce. What the trace
    cache keeps."""

    function: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    probe: torch.Tensor
    expected: dict[str, torch.Tensor]
    weight_bytes: int = 0  # what the traced weights take, about the size of the saved trace


class CodeComputer:
    """Callable: uint8 images [B, 3, H, W] -> {tap name: float32 CPU codes [B, dim]}."""

    def __init__(self, model: torch.nn.Module, taps: list[Tap], preprocess: dict, device: torch.device,
                 precision: str, batch_size: int, threads: int | None = None):
        """``threads``: how many threads the forward will run with (default: this process's)."""
        self._normalization(preprocess, device, precision, batch_size)
        tap_model = _tap_model(model, taps).to(device).eval().to(memory_format=torch.channels_last)
        tap_model.requires_grad_(False)  # a private copy; weights without grad can be traced as constants
        self.model, self.compiled, self.trace = tap_model, "", None
        if device.type == "cpu" and precision == "fp32":
            example = torch.zeros(batch_size, 3, preprocess["crop"], preprocess["crop"])
            with _num_threads(threads):
                self.model, self.compiled, self.trace = _script(
                    tap_model, example.contiguous(memory_format=torch.channels_last))

    @classmethod
    def from_trace(cls, trace: Trace, preprocess: dict, batch_size: int,
                   threads: int | None = None) -> CodeComputer | None:
        """A CPU fp32 computer fused by oneDNN Graph from an earlier ``trace`` (see ``.trace``), or None
        when that fails or no longer reproduces the trace's expected outputs."""
        self = cls.__new__(cls)
        self._normalization(preprocess, torch.device("cpu"), "fp32", batch_size)
        with _num_threads(threads), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                self.model = _onednn_graph(trace)
            except Exception:
                return None
        self.compiled, self.trace = "torchscript-onednn-graph", trace
        return self

    def _normalization(self, preprocess: dict, device: torch.device, precision: str, batch_size: int) -> None:
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1) * 255

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


def _script(model: torch.nn.Module, example: torch.Tensor):
    """``model`` compiled for CPU inference: traced and fused by oneDNN Graph, or else traced, frozen
    and passed through ``optimize_for_inference``; each candidate must match the eager model.
    Returns (module, how it was compiled: "" for the eager model when both fail, the Trace when
    oneDNN Graph took it)."""
    probe = torch.rand_like(example) * 4 - 2
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings; the outputs are checked
        expected = model(probe)
        try:
            trace = Trace(torch.jit.trace(lambda x: model(x), example, strict=False, check_trace=False),
                          probe, expected, sum(t.nbytes for t in model.state_dict().values()))
            return _onednn_graph(trace), "torchscript-onednn-graph", trace
        except Exception:  # a graph that cannot be traced, or that oneDNN Graph cannot take
            pass
        try:
            frozen = _frozen(model, example)
            _check(expected, frozen(probe))
            return frozen, "torchscript-frozen", None
        except Exception:
            pass
    return model, "", None


def _onednn_graph(trace: Trace) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``trace.function``, fused and compiled by oneDNN Graph; raises unless it reproduces ``trace.expected``."""
    was_enabled = torch._C._jit_llga_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:  # the profiling executor records shapes on the first call, then fuses, compiles and runs
        trace.function(trace.probe)  # the fused graph on the second; the flag is only read then
        got = trace.function(trace.probe)
    finally:
        torch.jit.enable_onednn_fusion(was_enabled)
    _check(trace.expected, got)
    return trace.function


def _frozen(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    traced = torch.jit.trace(model, example, strict=False, check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def _check(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    for name, value in expected.items():
        if not torch.allclose(value, got[name], rtol=1e-3, atol=1e-4):
            raise ValueError(f"compiled outputs of {name} differ from the eager model's")


@contextmanager
def _num_threads(threads: int | None):
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
