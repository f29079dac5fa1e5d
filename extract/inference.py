"""The mapper: uint8 image batches -> {tap name: float32 codes}, on the device's best runtime.

On the CPU the tap model (BatchNorm folded, normalization included) runs on OpenVINO, converted
through ``torch.export``: fp32, or bf16 where asked (``--precision auto`` picks it where the CPU
has native bf16). Several OpenVINO streams of one thread each take the batches in turn while the
caller decodes the next ones. A network that cannot be converted, or whose converted outputs do
not match the eager model's on a probe batch, runs in eager PyTorch instead, and ``note`` says so.
bf16 asked for on a CPU without native bf16 runs in eager PyTorch as well: OpenVINO would run it in
fp32 there, and the codes file must record the precision that made its codes.
On CUDA: eager PyTorch with autocast to bf16/fp16, pinned host memory and non-blocking copies (eager.py).
This module loads without torch: a network converted by an earlier run (``Network.converted``) runs on
OpenVINO with NumPy batches, and torch is imported only where the eager model is needed.
With ``views`` > 1 an image's views ride in the same batch (the forward pass takes images x views crops)
and ``map`` yields each image's mean of its views' codes (``mean_over_views``).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import device as devices
from . import openvino_model
from .recipe import Tap

if TYPE_CHECKING:
    import torch

    from .network import Network

# Small batches are fastest for CPU inference (cache-resident activations); GPUs want large ones.
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 64}
# Images per forward pass on the CPU where no batch size is asked for: a decoded batch of 4 runs as two passes of 2 in
# fp32 (its larger activations stay in cache), as one in bf16 (bench/RESULTS.md).
CPU_FORWARD_BATCH = {"fp32": 2, "bf16": 4}
# How close (cosine over a probe batch, per tap) a converted model must come to the eager fp32 one.
AGREEMENT = {"fp32": 0.9999, "bf16": 0.99}
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}

# codes per tap [B, dim], ok flags [B], error messages
Batch = tuple[dict[str, np.ndarray], np.ndarray, list[str]]


def default_batch_size(device) -> int:
    """Images decoded together. ``device``: a torch.device or device.Device (anything with ``type``)."""
    return DEFAULT_BATCH_SIZE.get(device.type, 32)


def default_forward_batch(device, precision: str, batch_size: int) -> int:
    """Images per forward pass for decoded batches of ``batch_size`` where no batch size was asked for."""
    return min(batch_size, CPU_FORWARD_BATCH.get(precision, batch_size)) if device.type == "cpu" else batch_size


def mean_over_views(codes: dict[str, np.ndarray], views: int) -> dict[str, np.ndarray]:
    """Each image's codes, the mean of its ``views`` consecutive rows (one image's views), as new arrays; with one
    view, ``codes`` itself."""
    if views == 1:
        return codes
    return {name: value.reshape(-1, views, value.shape[-1]).mean(axis=1) for name, value in codes.items()}


class OpenVINOComputer:
    """The mapper on OpenVINO (eager.CodeComputer's interface, without torch): ``streams`` inference requests of
    one thread each run batches concurrently, on a model compiled for ``batch_size`` crops (images x views;
    shorter batches are padded, longer ones run as several forward passes)."""

    runtime = "openvino"

    def __init__(self, compiled, names: list[str], precision: str, batch_size: int, streams: int, views: int = 1):
        self.device, self.precision, self.batch_size, self.note = devices.Device("cpu"), precision, batch_size, ""
        self.compiled, self.names, self.streams, self.views = compiled, names, streams, views

    def describe(self) -> str:
        return f"cpu {self.precision} openvino, {self.streams} stream(s)"

    def __call__(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Codes of one batch as torch tensors, to compare with the eager model (conversion checks, tests);
        runs use ``map``."""
        import torch

        images, outs, request = np.asarray(images), [], self.compiled.create_infer_request()
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            self._start(request, chunk)  # copied into the request's own input (padded), as in runs
            request.wait()
            outs.append([request.get_output_tensor(i).data[:len(chunk)].copy() for i in range(len(self.names))])
        return {name: torch.from_numpy(np.concatenate([o[i] for o in outs])) for i, name in enumerate(self.names)}

    def _missing(self, n: int) -> int:
        """The black images that fill a batch of ``n`` up to the compiled batch size (their codes are dropped)."""
        if n > self.batch_size:
            raise ValueError(f"a batch of {n} images for a model compiled for {self.batch_size}")
        return self.batch_size - n

    def _start(self, request, images: np.ndarray) -> None:
        """Start ``request`` on ``images``, copied (padded) into its own input tensor: the same bytes as handing
        OpenVINO the array, without its Python input dispatch (bench/RESULTS.md)."""
        n, missing = len(images), self._missing(len(images))
        target = request.get_input_tensor(0).data
        target[:n] = images
        if missing:
            target[n:] = 0
        request.start_async()

    def map(self, batches):
        """Keeps every stream busy: each forward pass of a batch (a batch larger than the compiled size runs as
        several) is started on a free inference request, and when none is free the oldest one is waited for and
        its codes yielded, so they come out in order, a forward pass's images at a time. Those codes may be its
        request's output memory: like the decoded batches, valid until the next batch is asked for."""
        free = [self.compiled.create_infer_request() for _ in range(3 * self.streams)]  # two waiting per stream
        running: deque[tuple[object, np.ndarray, list[str]]] = deque()
        step = self.batch_size // self.views  # images in a forward pass
        for images, ok, errors in batches:
            images, ok = np.asarray(images), np.asarray(ok)
            for start in range(0, len(ok), step):
                if not free:
                    yield self._finish(*running.popleft(), free)
                request = free.pop()
                self._start(request, images[start * self.views:(start + step) * self.views])
                running.append((request, ok[start:start + step], errors[start:start + step]))
        while running:
            yield self._finish(*running.popleft(), free)

    def _finish(self, request, ok: np.ndarray, errors: list[str], free: list) -> Batch:
        request.wait()
        rows = len(ok) * self.views  # the padding's codes are dropped
        codes = mean_over_views({name: request.get_output_tensor(i).data[:rows] for i, name in enumerate(self.names)},
                                self.views)
        free.append(request)
        return codes, ok, errors


def _compiled(read_model: Callable[[], object], taps: list[Tap], precision: str, batch_size: int, streams: int,
              views: int = 1, key: str | None = None, ir: Path | None = None) -> OpenVINOComputer:
    """The model ``read_model()`` gives, compiled for ``batch_size`` crops; its compiled form is kept with the cache
    entry ``key`` (openvino_model.compiled_dir). With ``ir``, the entry's IR file of that model, the model is
    compiled from its fixed-batch form's file (openvino_model.fixed_batch_ir), read only to write that form."""
    # OpenVINO pins each process's stream threads from the first core on: ranks sharing a machine would all
    # be pinned onto the same cores (bench/RESULTS.md), so pin only streams that fill the CPUs
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision], "NUM_STREAMS": streams,
              "INFERENCE_NUM_THREADS": streams, "PERFORMANCE_HINT": "THROUGHPUT",
              "ENABLE_CPU_PINNING": streams >= devices.usable_cpus()}
    fixed = openvino_model.fixed_batch_ir(ir, batch_size, read_model) if ir is not None else None
    if fixed is None:
        fixed = openvino_model.with_batch(read_model(), batch_size)
    compiled = _compile(fixed, config, openvino_model.compiled_dir(key))
    runs = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if runs != OPENVINO_PRECISION[precision]:  # the codes file records what made its codes
        raise ValueError(f"OpenVINO runs {runs} here, not {precision}")
    return OpenVINOComputer(compiled, [t.name for t in taps], precision, batch_size, streams, views)


def _compile(model, config: dict, cache: Path | None):
    """Compile ``model`` (an ``openvino.Model``, or the path of its IR file), loading or storing its compiled form
    in ``cache``; without it where OpenVINO cannot use that folder (not writable, say), which only costs time."""
    core, model = openvino_model.core(), str(model) if isinstance(model, Path) else model
    if cache is not None:
        try:
            return core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(cache)})
        except RuntimeError:
            pass
    return core.compile_model(model, "CPU", config)


def check_agreement(expected: dict, got: dict, min_cosine: float) -> None:
    """Raise unless every tap of ``got`` is within ``min_cosine`` of ``expected`` (and of the same shape); arrays
    or tensors."""
    for name, want in expected.items():
        a, b = np.asarray(want, dtype=np.float64), np.asarray(got[name], dtype=np.float64)
        if b.shape != a.shape:
            raise ValueError(f"converted {name} has shape {tuple(b.shape)}, not {tuple(a.shape)}")
        a, b = a.ravel(), b.ravel()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cosine = float(a @ b / max(na * nb, 1e-30)) if na > 0 else float(nb == 0)
        if cosine < min_cosine:
            raise ValueError(f"converted {name} differs from the eager model (cosine {cosine:.5f})")

