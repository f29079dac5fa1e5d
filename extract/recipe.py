"""The extraction recipe: everything that determines the codes an image gets."""
from __future__ import annotations

from .backbones import Backbone
from .taps import Tap
from .weights import WeightsInfo


def preprocess_config(backbone: Backbone, resize: int | None = None, crop: int | None = None) -> dict:
    """The backbone's ImageNet evaluation transform (resize shorter side, center crop, normalize)."""
    transform = backbone.default_weights.transforms()
    return {
        "resize": int(resize or transform.resize_size[0]),
        "crop": int(crop or transform.crop_size[0]),
        "mean": [float(m) for m in transform.mean],
        "std": [float(s) for s in transform.std],
        "interpolation": transform.interpolation.value,
    }


def make_recipe(backbone: Backbone, weights: WeightsInfo, taps: list[Tap], preprocess: dict) -> dict:
    """The recipe recorded in codes files and models; see codesfile.RECIPE_KEYS for what must match."""
    return {
        "backbone": backbone.name,
        "weights_sha256": weights.sha256 or "random",
        "weights_name": weights.name,
        "taps": [t.as_dict() for t in taps],
        "preprocess": preprocess,
    }
