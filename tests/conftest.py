"""Shared fixtures: real image files on disk and fast extraction settings."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# Small inputs and an untrained network keep extraction tests fast; every test names these explicitly.
# fp32: codes comparable with a hand-written eager forward on any CPU (bf16 is tested on its own).
FAST = ["--weights", "random", "--resize", "72", "--crop", "64", "--precision", "fp32", "--quiet"]


def write_image(path: Path, rng: np.random.Generator, size=(80, 60), fmt: str | None = None, cls: int = 0) -> None:
    """A real image with class-dependent content: a coloured gradient plus noise."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (cls + 1) * 3) % 256, (yy * (cls + 2) * 5) % 256, ((xx + yy) * 7 * (cls + 1)) % 256], -1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_tree(root: Path, classes=("cat", "dog"), per_class: int = 6, splits=("",), seed: int = 0,
              ext: str = "png") -> Path:
    """root/[split/]class/img_k.ext with ``per_class`` images per class and split."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            for k in range(per_class):
                write_image(root / split / name / f"img_{k:03d}.{ext}", rng, cls=c)
    return root


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "images")


@pytest.fixture
def split_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "split_images", per_class=5, splits=("train", "test"))


@pytest.fixture(scope="session")
def _session_model_cache(tmp_path_factory) -> Path:
    """One converted-model cache for the whole session: each network is converted for OpenVINO once."""
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path_factory, monkeypatch, _session_model_cache):
    """Tests never read or write the user's torch hub cache or model cache, and never download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("CNNCODES_CACHE_DIR", str(_session_model_cache))
    monkeypatch.setenv("CNNCODES_OFFLINE", "1")
    monkeypatch.delenv("CNNCODES_DOWNLOAD_BASE", raising=False)


os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_report_header(config) -> str:
    """Which CPU path the suite runs: the CPU's own, or the one forced with $CNNCODES_CPU_CAPABILITIES
    (``CNNCODES_CPU_CAPABILITIES=FP32,INT8 make test`` runs it as on a CPU without native bf16)."""
    forced = os.environ.get("CNNCODES_CPU_CAPABILITIES")
    return f"CPU capabilities: {'forced to ' + forced if forced is not None else 'as the CPU reports them'}"
