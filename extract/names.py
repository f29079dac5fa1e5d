"""The backbone names cnncodes knows, torch-free, so that a command checks --backbone before torch loads."""
from __future__ import annotations

from .errors import UsageError

BACKBONE_NAMES = ("mobilenet_v2", "alexnet", "vgg16", "resnet18", "resnet50")  # backbones.BACKBONES' keys


def check_backbone(name: str) -> str:
    """``name`` if it is a known backbone, else a UsageError listing the known ones."""
    if name not in BACKBONE_NAMES:
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONE_NAMES))}")
    return name
