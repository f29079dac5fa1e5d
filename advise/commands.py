"""The command lines advise recommends for each scenario, with the options the user gave carried over."""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass

from .evidence import TOP_LAYER
from .scenario import FREEZE_LARGE_DIFFERENT, FREEZE_LARGE_SIMILAR, FREEZE_SMALL_DIFFERENT

NO_TIME_CAP_S = 1e12  # advise sets no time budget: only epochs_for's step rule sizes the fine-tune


@dataclass(frozen=True)
class Recommendation:
    """One command to run and why it is recommended."""

    command: str
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def codes_command(images: str, layer: str, common: list[str]) -> str:
    return _join(["cnncodes", "run", images, "--out", f"runs/codes-{layer}", "--layer", layer, *common])


def finetune_command(images: str, freeze: float, common: list[str], epochs: int | None = None) -> str:
    sized = [] if epochs is None else ["--epochs", str(epochs)]
    return _join(["cnncodes", "finetune", images, "--out", f"runs/finetune-{freeze:g}", "--freeze", f"{freeze:g}",
                  *sized, *common])


def finetune_epochs(listing) -> int | None:
    """Epochs for the recommended fine-tune: finetune.budget's step rule (no time cap) on the images finetune's
    defaults leave for training after its carves, as in the calibration sweep; None when they cannot be carved."""
    from cnncodes.finetune.budget import epochs_for
    from cnncodes.finetune.data import choose_splits
    from cnncodes.finetune.options import FinetuneConfig as F

    try:
        splits = choose_splits(listing, listing.labels >= 0, F.val_fraction, F.seed)
    except ValueError:
        return None  # finetune itself names the problem
    return epochs_for(len(splits.train), F.batch_size, NO_TIME_CAP_S, 1.0) or None


def carried_options(backbone: str, weights: str | None, resize: int | None, crop: int | None,
                    **columns: str | None) -> list[str]:
    """The backbone, weights and image size options of the advise run, so the commands use the same network,
    and its manifest ``columns`` (path_column=...), so they read the same labels."""
    out = [] if backbone == "mobilenet_v2" else ["--backbone", backbone]
    named = ((f"--{option.replace('_', '-')}", value) for option, value in columns.items())
    for flag, value in (("--weights", weights), ("--resize", resize), ("--crop", crop), *named):
        if value is not None:
            out += [flag, str(value)]
    return out


def recommend(scenario: int, images: str, early_layer: str | None, common: list[str],
              epochs: int | None = None) -> list[Recommendation]:
    """The commands for ``scenario``, most recommended first; ``epochs`` sizes the fine-tunes (finetune_epochs)."""
    top = Recommendation(codes_command(images, TOP_LAYER, common),
                         "a linear classifier on the top layer's CNN codes (one pass, seconds to fit)")
    if scenario == 1:
        return [top]
    if scenario == 2:
        return [Recommendation(finetune_command(images, FREEZE_LARGE_SIMILAR, common, epochs),
                               f"fine-tune the upper {1 - FREEZE_LARGE_SIMILAR:.0%} of the network"),
                Recommendation(top.command, "the codes baseline to compare with")]
    if scenario == 3:
        early = [] if early_layer is None else [Recommendation(
            codes_command(images, early_layer, common),
            f"a linear classifier on earlier codes ({early_layer}, the best earlier layer in the probe): minutes "
            "faster, and it won on the fifth (8 x 8 digit scans)")]
        tune = Recommendation(finetune_command(images, FREEZE_SMALL_DIFFERENT, common, epochs),
                              "fine-tune with the first third of the network frozen (slower; it won on 4 of the 5 "
                              "calibration sets in this scenario, bench/RESULTS.md)")
        return [tune] + early
    if scenario == 4:
        return [Recommendation(finetune_command(images, FREEZE_LARGE_DIFFERENT, common, epochs),
                               "fine-tune the entire network (ImageNet weights as the starting point)")]
    raise ValueError(f"scenario must be 1-4, not {scenario!r}")


def _join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
