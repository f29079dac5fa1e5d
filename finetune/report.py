"""finetune_report: classify's report contract filled for a fine-tuned network, and its learning-curve plot.

Apart from finetune.train so that the entry point stays short and the report reads beside classify's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from cnncodes.classify.data import coverage_notes
from cnncodes.classify.models import parse_class_weight
from cnncodes.classify.report import binary_metrics, build_report, missing_test_classes
from cnncodes.extract.weights import WeightsInfo

from .data import resampled_counts
from .trainer import Trainer


def finetune_report(trainer: Trainer, listing, splits, data: dict, options: dict, probs: np.ndarray, recipe: dict,
                    winfo: WeightsInfo) -> dict:
    """classify's report keys, filled for a fine-tuned network, plus ``val_balanced_accuracy`` and ``finetune``.

    Two classes get classify's binary section (ROC / PR on the second class's probability, its default positive).
    """
    names, net, best = listing.class_names, trainer.net, trainer.best
    y_pred = probs.argmax(1)
    weights = parse_class_weight(options["class_weight"], names)
    n_failed = len(data["failures"])
    notes = list(splits.notes)
    if listing.ignored:
        notes.append(f"{len(listing.ignored)} file(s) skipped because they are not images by name "
                     f"(first: {listing.ignored[0]})")
    if n_failed:
        notes.append(f"{n_failed} image(s) could not be read and were excluded (listed under finetune.failures)")
    if len(data["val_labels"]):
        notes.append(f"validation set (chooses the epoch): {splits.val_source}; the evaluation split chose nothing")
    else:
        notes.append("no validation set: the model is the last epoch's and there is no validation score "
                     "(--val-fraction F carves one from train to choose the epoch); the evaluation split chose nothing")
    notes.append("BatchNorm statistics " + ("trained (--train-bn) in the unfrozen units" if options["train_bn"]
                                            else "kept at their pretrained values (eval mode)"))
    if trainer.stopped_early:
        notes.append(f"stopped early after epoch {len(trainer.history)}: no validation gain for "
                     f"{options['patience']} epoch(s)")
    frozen = net.frozen_units
    hyper = (f"freeze={len(frozen)}/{len(net.units)} units, lr={options['lr']:g}, "
             f"backbone x{options['backbone_lr_mult']:g}, epoch {best['epoch']}/{trainer.total_epochs}")
    y_train, y_test = data["train_labels"], data["test_labels"]
    notes += coverage_notes(y_train, y_test, names) + missing_test_classes(y_test, y_pred, names)
    notes += trainer.weight_notes
    binary = None
    if len(names) == 2:
        binary = binary_metrics(y_test, y_pred, probs[:, 1], 1, names, "softmax")
        notes += binary.pop("notes")
    settings = {
        "codes": None, "test_codes": None, "split_source": splits.split_source, "layers": [],
        "classifier": "finetune", "normalize": f"mean {data['mean']}, std {data['std']} (the backbone's)", "sampling": options["sampling"],
        "seed": options["seed"], "C": None, "best_params": {"epoch": best["epoch"], "frozen_units": len(frozen)},
        "hyperparameter": hyper, "cv_score": best["score"], "cv_folds": 0,
        "cv_scoring": "balanced_accuracy on the validation set", "cv_grid": {},
        "n_failed_excluded": n_failed, "n_unlabeled_excluded": int((listing.labels < 0).sum()),
        "max_iter": None, "calibrated": False, "recipe": recipe,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    extra = {
        "val_balanced_accuracy": best["score"],
        "finetune": {"options": options, "images": str(listing.root), "n_val": int(len(data["val_labels"])),
                     "val_source": splits.val_source, "frozen_units": frozen, "trained_units": net.units[len(frozen):],
                     "head": net.head, "loss_weights": dict(zip(names, trainer.class_weights.round(6).tolist())),
                     "best_epoch": best["epoch"], "epochs_run": len(trainer.history),
                     "stopped_early": trainer.stopped_early, "precision": trainer.precision,
                     "device": str(trainer.device), "initial_weights": winfo.as_dict(), "history": trainer.history,
                     "failures": [list(f) for f in data["failures"]]},
    }
    resampled = {names[c]: n for c, n in resampled_counts(y_train, options["sampling"]).items()}
    return build_report(settings, names, y_train, y_test, y_pred, class_weight=options["class_weight"],
                        weights=weights, fit_time=sum(r["seconds"] for r in trainer.history), binary=binary,
                        notes=notes, resampled_class_counts=resampled, extra=extra)


def plot_curve(history: list[dict], path: Path, best_epoch: int) -> None:
    """Write curve_figure as a PNG."""
    import matplotlib.pyplot as plt

    fig = curve_figure(history, best_epoch)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def curve_figure(history: list[dict], best_epoch: int):
    """Training and validation loss and validation balanced accuracy per (whole) epoch, the chosen epoch marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="training loss")
    val_loss = [r.get("val_loss") for r in history]  # absent from checkpoints of older versions
    if any(v is not None for v in val_loss):
        ax.plot(epochs, [np.nan if v is None else v for v in val_loss], "o--", color="tab:cyan",
                label="validation loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss", color="tab:blue")
    scores = [r["val_balanced_accuracy"] for r in history]
    if any(s is not None for s in scores):
        ax2 = ax.twinx()
        ax2.plot(epochs, [np.nan if s is None else s for s in scores], "s-", color="tab:orange",
                 label="validation balanced accuracy")
        ax2.set_ylabel("validation balanced accuracy", color="tab:orange")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"chosen epoch {best_epoch}")
    lp = [r["epoch"] for r in history if r["phase"] == "lp"]
    if lp:
        ax.axvspan(0.5, max(lp) + 0.5, color="grey", alpha=0.1, label="linear probe (head only)")
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="center right", fontsize="small")
    ax.set_title("fine-tuning learning curve")
    return fig
