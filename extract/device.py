"""Choose the compute device and precision."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .options import check_options
# Overrides what the CPU reports (e.g. "FP32,INT8" for a CPU without native bf16), to run or test another CPU's path.
CAPABILITIES_ENV = "CNNCODES_CPU_CAPABILITIES"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], not {device!r}")
    return torch.device(device)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as taskset or Slurm set it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_capabilities() -> list[str]:
    """What OpenVINO says this CPU computes natively (``BF16`` where it has AMX or AVX512-BF16); [] without it.
    ``$CNNCODES_CPU_CAPABILITIES`` (comma-separated), when set, is reported instead."""
    forced = os.environ.get(CAPABILITIES_ENV)
    if forced is not None:
        return [name.strip().upper() for name in forced.split(",") if name.strip()]
    from . import openvino_model

    if not openvino_model.available():
        return []
    return list(openvino_model.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str, device: torch.device) -> None:
    """The precision rule of every command: a declared value (extract/options.py), and fp16 only on GPUs."""
    check_options({"precision": precision})
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 is for GPUs; on the CPU use fp32 or bf16")


def pick_precision(precision: str, device: torch.device,
                   capabilities: Callable[[], list[str]] | None = None) -> str:
    """``auto``: bf16 (or fp16) on GPUs; on CPUs bf16 where ``capabilities()`` reports native BF16
    (elsewhere it is emulated and slower than fp32), else fp32."""
    check_precision(precision, device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16(capabilities) else "fp32"


def native_bf16(capabilities: Callable[[], list[str]] | None = None) -> bool:
    """Whether the CPU computes bf16 natively, as OpenVINO reports it (elsewhere bf16 is emulated)."""
    return "BF16" in (capabilities or cpu_capabilities)()
