"""Names cnncodes recognizes, torch-free so that a command checks its input before torch loads: the
backbones, the layer syntax, and the files that tell what a run folder holds."""
from __future__ import annotations

from typing import Sequence

from .errors import UsageError

CODES_MODEL = "model.joblib"  # `cnncodes classify`: the scikit-learn model
FINETUNED_MODEL = "finetuned.pt"  # `cnncodes finetune`: the network with its new head, for predict
# `cnncodes finetune`: the tuned backbone in torchvision's key naming, with the stock ImageNet classifier kept
# in place of the new head, so that it loads strictly like the original checkpoint (extract --weights)
FINETUNED_BACKBONE = "backbone.pth"
AUTO_RESULT, AUTO_WINNER = "auto.json", "winner"  # `cnncodes auto`: its result and the refit winner's run folder
BACKBONE_NAMES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "alexnet", "vgg16",
                  "resnet18", "resnet50")  # backbones.BACKBONES' keys


def check_backbone(name: str) -> str:
    """``name`` if it is a known backbone, else a UsageError listing the known ones."""
    if name not in BACKBONE_NAMES:
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONE_NAMES))}")
    return name


def layer_runs(spec: str | Sequence[str | Sequence[str]]) -> list[list[str]]:
    """The layer syntax of every command and of the API: commas separate runs, ``+`` concatenates taps, spaces
    are ignored. ``"block4, block4 + penultimate"`` -> ``[["block4"], ["block4", "penultimate"]]``.

    A list is read as repeated ``--layer`` values: a text item may hold several runs, a list item is one run."""
    items = [spec] if isinstance(spec, str) else list(spec)
    runs = [_taps(part) for item in items
            for part in (item.split(",") if isinstance(item, str) else ["+".join(map(str, item))])]
    if not runs or any("" in run for run in runs):
        raise UsageError(f"layers {spec!r}: an empty entry; write runs separated by commas, taps joined by +")
    return runs


def concatenated_taps(spec: str | Sequence[str]) -> list[str]:
    """The taps of one run, side by side: ``"a+b"``, ``"a + b"``, or a list of taps (``--layer`` repeated)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    runs = [layer_runs(str(item)) for item in items]
    if any(len(found) > 1 for found in runs):
        raise UsageError(f"layers {spec!r}: a comma separates runs, and this takes one; join taps with + (a+b)")
    return [t for found in runs for t in found[0]]


def tap_names(spec: str | Sequence[str | Sequence[str]]) -> tuple[str, ...]:
    """Every tap that ``spec``'s runs name, once each, in order: what one forward pass must extract."""
    return tuple(dict.fromkeys(t for run in layer_runs(spec) for t in run))


def _taps(text: str) -> list[str]:
    return [t.strip() for t in text.split("+")]
