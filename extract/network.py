"""The network an extraction runs: its taps, and the model itself only where something needs it.

Building the backbone and resolving its taps (a probe forward through it) cost a rerun a good part
of its start-up. On the CPU, the converted-model cache (openvino_model) keeps the taps beside the
converted model, under a key of what was asked (backbone, weights, layers, pooling, input size and
normalization), so a rerun reads both and builds nothing; the model is built when the run needs the
eager network after all (no cached entry, a fallback, or another device). A rerun imports no torch.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import openvino_model
from .backbones import Backbone
from .recipe import Tap
from .weights import WeightsInfo, build_model

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Network:
    """The taps, a model built on first use, and on the CPU the cache key and the cached converted model."""

    taps: list[Tap]
    build: Callable[[], nn.Module]
    key: str | None = None  # of the converted-model cache (None: not cached)
    ir: Path | None = None  # the cached converted model's IR file

    @functools.cached_property
    def model(self) -> nn.Module:
        return self.build()

    @functools.cached_property
    def converted(self):
        """The cached converted model (an ``openvino.Model``), read on first use; None where not cached."""
        return openvino_model.read_cached(self.ir) if self.ir is not None else None

    def cache_meta(self) -> dict:
        """What the cache keeps beside a converted model so that a rerun need not resolve the taps."""
        return {"taps": [t.as_dict() for t in self.taps]}


def prepare(backbone: Backbone, weights: WeightsInfo, layers: list[str], pool: str, preprocess: dict, max_dim: int,
            device) -> Network:
    """The network for ``layers`` of ``backbone``: from the converted-model cache where it holds it, else built.
    ``device``: a torch.device or device.Device."""
    key = _cache_key(backbone, weights, layers, pool, preprocess, max_dim) if device.type == "cpu" else None
    build = functools.partial(build_model, backbone, weights)
    hit = openvino_model.cached(key) if key else None
    if hit is not None:
        ir, meta = hit
        return Network([Tap.from_dict(t) for t in meta["taps"]], build, key, ir)
    from .taps import resolve_taps  # torch

    model = build()
    taps = resolve_taps(backbone, model, list(layers), pool, preprocess["crop"], max_dim)
    return Network(taps, lambda: model, key)


def _cache_key(backbone: Backbone, weights: WeightsInfo, layers: list[str], pool: str, preprocess: dict,
               max_dim: int) -> str | None:
    if not openvino_model.available():
        return None
    return openvino_model.cache_key({
        "backbone": backbone.name, "weights": weights.sha256 or weights.source, "layers": list(dict.fromkeys(layers)),
        "pool": pool, "crop": preprocess["crop"], "mean": preprocess["mean"], "std": preprocess["std"],
        "max_dim": max_dim})
