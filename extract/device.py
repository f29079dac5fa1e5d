"""The device and precision policy of every command (extract, finetune, predict, advise): CPU or CUDA, and
which precision ``auto`` means there. Torch is imported only where a GPU may be picked, so that the names, the
checks and a CPU run load without it (assembling, option checks, a warm extraction)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .checks import require
from .errors import UsageError

if TYPE_CHECKING:
    import torch

    from .shards import Shard

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Overrides what the CPU reports (e.g. "FP32,INT8" for a CPU without native bf16), to run or test another CPU's path.
CAPABILITIES_ENV = "CNNCODES_CPU_CAPABILITIES"


@dataclass(frozen=True)
class Device:
    """A picked device by name ("cpu", "cuda:1"), with torch.device's ``type``, made without importing torch;
    ``torch.device(str(d))`` is the torch one."""

    name: str

    @property
    def type(self) -> str:
        return self.name.split(":")[0]

    def __str__(self) -> str:
        return self.name


# Device files of the drivers through which torch finds a GPU (NVIDIA, ROCm, WSL): without any, ``auto`` is the CPU.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def choose_device(device: str = "auto", shard: Shard | None = None) -> Device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA is a clear error. Ranks sharing a machine
    with GPUs (``shard``) each take their own: ``auto`` or ``cuda`` becomes ``cuda:LOCAL_RANK`` modulo the GPUs.
    Torch is asked only where a GPU driver is present (or torch is loaded already), so a CPU run loads no torch."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not {device!r}")
    if device == "cpu" or (device == "auto" and not gpu_driver_present()):
        return Device("cpu")
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if shard is not None and device == "cuda":
        device = shard.device(device, torch.cuda.device_count())
    return Device(device)


def gpu_driver_present() -> bool:
    """Whether torch could find a GPU here: torch is loaded already (then it is asked), or a driver's files exist."""
    return "torch" in sys.modules or any(os.path.exists(path) for path in GPU_DRIVER_FILES)


def pick_device(device: str = "auto", shard: Shard | None = None) -> torch.device:
    """``choose_device`` as a torch.device (imports torch)."""
    import torch

    return torch.device(str(choose_device(device, shard)))


def check_precision(precision: str, device_type: str | None = None) -> str:
    """``precision`` if it is a known one (and not fp16 on a CPU), else a UsageError."""
    require("precision", precision, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device_type == "cpu":
        raise UsageError("--precision fp16 is for GPUs; on the CPU use fp32 or bf16")
    return precision


def pick_precision(precision: str, device: torch.device | Device, capabilities: Callable[[], list[str]] | None = None,
                   training: bool = False, bf16_supported: bool | None = None) -> str:
    """``auto``: bf16 on GPUs where supported, else fp16. On CPUs inference takes bf16 where ``capabilities()``
    reports native BF16 (elsewhere it is emulated and slower than fp32), else fp32; training takes fp32."""
    if check_precision(precision, device.type) != "auto":
        return precision
    if device.type == "cuda":
        if bf16_supported is None:
            import torch

            bf16_supported = torch.cuda.is_bf16_supported()
        return "bf16" if bf16_supported else "fp16"
    return "bf16" if not training and native_bf16(capabilities) else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch.autocast dtype of a picked precision; None for fp32 (no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def mixed_precision(device: torch.device, precision: str = "auto",
                    bf16_supported: bool | None = None) -> tuple[torch.dtype | None, bool]:
    """Training's (autocast dtype or None for fp32, whether a GradScaler is needed): fp16 needs loss scaling."""
    picked = pick_precision(precision, device, training=True, bf16_supported=bf16_supported)
    return autocast_dtype(picked), picked == "fp16"


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


def native_bf16(capabilities: Callable[[], list[str]] | None = None) -> bool:
    """Whether the CPU computes bf16 natively, as OpenVINO reports it (elsewhere bf16 is emulated)."""
    return "BF16" in (capabilities or cpu_capabilities)()
