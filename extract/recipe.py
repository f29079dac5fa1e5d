"""What defines the codes (``Recipe``: stored in the file, compared on resume) and how a run goes (``RunOptions``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backbones import Backbone
    from .weights import WeightsInfo

DEFAULT_PART_SIZE = 512


@dataclass(frozen=True)
class Tap:
    """One tapped layer: its display name, graph node, pooling and resulting code shape."""

    name: str
    node: str
    pool: str
    dim: int
    shape: tuple[int, ...]  # the node's output shape for one image, before pooling

    def as_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "relu": True}

    @classmethod
    def from_dict(cls, stored: dict) -> Tap:
        """The Tap that ``as_dict`` stored (in a recipe, or beside a converted model)."""
        return cls(stored["name"], stored["node"], stored["pool"], stored["dim"], tuple(stored["shape"]))


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the codes an image gets; see codesfile.RECIPE_KEYS for what must match."""

    backbone: str
    weights_sha256: str
    weights_name: str
    taps: list[dict]
    preprocess: dict
    precision: str
    views: int = 1  # crops averaged per image (images.views_of)

    @classmethod
    def make(cls, backbone: Backbone, weights: WeightsInfo, taps: list[Tap], preprocess: dict,
             precision: str, views: int = 1) -> Recipe:
        return cls(backbone.name, weights.sha256 or "random", weights.name, [t.as_dict() for t in taps], preprocess,
                   precision, views)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """How fast and where (the codes do not depend on these, except precision, which goes into the Recipe)."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    part_size: int | None = None
    progress: bool = True


def preprocess_config(backbone: Backbone, resize: int | None = None, crop: int | None = None) -> dict:
    """The backbone's ImageNet evaluation transform (resize shorter side, center crop, normalize)."""
    transform = backbone.eval_transform()
    return {
        "resize": int(resize or transform["resize"]),
        "crop": int(crop or transform["crop"]),
        "mean": [float(m) for m in transform["mean"]],
        "std": [float(s) for s in transform["std"]],
        "interpolation": transform["interpolation"],
    }


def make_recipe(backbone: Backbone, weights: WeightsInfo, taps: list[Tap], preprocess: dict,
                precision: str = "fp32") -> dict:
    """The recipe as the dict stored in codes files and models."""
    return Recipe.make(backbone, weights, taps, preprocess, precision).as_dict()
