"""EfficientNet-Lite0/1/2's scaling (efficientnet_lite.py builds the networks): torch-free, so that the
backbone table (backbones.py) knows each variant's input size and stages without building one."""
from __future__ import annotations

import math
from dataclasses import dataclass

# Stages of EfficientNet-B0 / Lite0: (repeats, kernel, stride, expansion, input channels, output channels).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


@dataclass(frozen=True)
class Scaling:
    """A Lite variant: width and depth multipliers, its input size and the dropout before its classifier."""

    width: float
    depth: float
    crop: int
    dropout: float


VARIANTS = {"efficientnet_lite0": Scaling(1.0, 1.0, 224, 0.2), "efficientnet_lite1": Scaling(1.0, 1.1, 240, 0.2),
            "efficientnet_lite2": Scaling(1.1, 1.2, 260, 0.3)}


def stage_repeats(scaling: Scaling) -> list[int]:
    """Blocks per stage: scaled by the depth multiplier, except the first and last stages."""
    last = len(STAGES) - 1
    return [r if i in (0, last) else math.ceil(scaling.depth * r) for i, (r, *_) in enumerate(STAGES)]
