"""bench/gpu_speed.py without a GPU: the one-line refusal and the device helpers (fake torch.cuda)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import gpu_speed  # noqa: E402


def fake_torch(count: int, bf16: bool = True):
    cuda = SimpleNamespace(is_available=lambda: count > 0, device_count=lambda: count, is_bf16_supported=lambda: bf16)
    return SimpleNamespace(cuda=cuda, device=torch.device, bfloat16=torch.bfloat16, float16=torch.float16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal cannot happen")
def test_refuses_with_one_line_without_cuda():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_speed.py")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == gpu_speed.EXIT_NO_GPU == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_speed: no CUDA device (torch.cuda.is_available() is False): nothing measured"]
    assert proc.stdout == ""


def test_device_from_local_rank():
    assert gpu_speed.cuda_device(fake_torch(0), {}) is None
    assert gpu_speed.cuda_device(fake_torch(2), {}) == torch.device("cuda", 0)
    assert gpu_speed.cuda_device(fake_torch(2), {"LOCAL_RANK": "1"}) == torch.device("cuda", 1)
    assert gpu_speed.cuda_device(fake_torch(2), {"LOCAL_RANK": "3"}) == torch.device("cuda", 1)  # wraps around


def test_autocast_dtype_follows_bf16_support():
    assert gpu_speed.autocast_dtype(fake_torch(1, bf16=True)) is torch.bfloat16
    assert gpu_speed.autocast_dtype(fake_torch(1, bf16=False)) is torch.float16


def test_refuse_without_gpu_returns_the_device_when_present():
    assert gpu_speed.refuse_without_gpu(fake_torch(1)) == torch.device("cuda", 0)
    with pytest.raises(SystemExit) as err:
        gpu_speed.refuse_without_gpu(fake_torch(0))
    assert err.value.code == 2
