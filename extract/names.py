"""Names cnncodes recognizes, torch-free so that a command checks its input before torch loads: the
backbones, and the files that tell what a run folder holds."""
from __future__ import annotations

from .errors import UsageError

CODES_MODEL = "model.joblib"  # `cnncodes classify`: the scikit-learn model
FINETUNED_MODEL = "finetuned.pt"  # `cnncodes finetune`: the network with its new head, for predict
# `cnncodes finetune`: the tuned backbone in torchvision's key naming, with the stock ImageNet classifier kept
# in place of the new head, so that it loads strictly like the original checkpoint (extract --weights)
FINETUNED_BACKBONE = "backbone.pth"
BACKBONE_NAMES = ("mobilenet_v2", "alexnet", "vgg16", "resnet18", "resnet50")  # backbones.BACKBONES' keys


def check_backbone(name: str) -> str:
    """``name`` if it is a known backbone, else a UsageError listing the known ones."""
    if name not in BACKBONE_NAMES:
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONE_NAMES))}")
    return name


def tap_names(values: list[str] | None) -> tuple[str, ...]:
    """Every tap named in --layer values (a,b and a+b name two), once each, in order: what one forward pass
    must extract. Split here rather than by classify.data, whose import would load scikit-learn for extract."""
    names = (t.strip() for value in (values or ["penultimate"]) for t in value.replace("+", ",").split(","))
    return tuple(dict.fromkeys(t for t in names if t))
