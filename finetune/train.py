"""finetune_images: fine-tune a backbone with a new head on an image collection, with classify's reports.

Per step: warm-up then cosine learning rates (head at ``lr``, backbone at ``lr x backbone_lr_mult``),
label-smoothed, class-weighted cross-entropy, SGD with momentum or AdamW. After every epoch the
validation set, where there is one (never the evaluation split), is scored and a checkpoint is written;
the best epoch's weights are kept, else the last epoch's. Rerunning the same command resumes after the last
completed epoch.
"""
from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cnncodes.classify.fileio import ensure_writable, write_files
from cnncodes.classify.data import require_two_classes
from cnncodes.classify.models import parse_class_weight
from cnncodes.classify.render import report_files, summarize
from cnncodes.extract.backbones import get_backbone
from cnncodes.extract.names import FINETUNED_MODEL
from cnncodes.extract.device import check_precision, pick_device
from cnncodes.extract.errors import UsageError
from cnncodes.extract.outputs import guards_output
from cnncodes.extract.reader import list_images
from cnncodes.extract.recipe import make_recipe, preprocess_config
from cnncodes.extract.taps import resolve_taps
from cnncodes.extract.weights import FINETUNED_BACKBONE, WeightsInfo, build_model, locate_weights

from . import checkpoint
from . import options as options_module
from .budget import step_sized_epochs
from .data import choose_splits, decode, default_workers, resampled_counts
from .model import backbone_state, backbone_units, build_network, frozen_count, head_name, place
from .report import finetune_report, plot_curve
from .trainer import FORMAT_VERSION, FinetuneInterrupted, Trainer

MODEL_FILE = FINETUNED_MODEL  # classify.runs tells the kinds of run apart by it
BACKBONE_FILE = FINETUNED_BACKBONE  # torchvision key naming, loads with extract --weights
CURVE = "learning_curve.png"


@guards_output("out_dir", images="images", resumes=checkpoint.exists)  # a rerun of the same command resumes
def finetune_images(images: str | os.PathLike, out_dir: str | os.PathLike, *, backbone: str = "mobilenet_v2",
                    weights: str | None = None, freeze: float | None = 1 / 3, freeze_until: str | None = None,
                    epochs: int | None = None, lp_epochs: int = 0, batch_size: int = 32, lr: float = 0.01,
                    backbone_lr_mult: float = 0.1, weight_decay: float = 1e-4, warmup_epochs: float = 1.0,
                    label_smoothing: float = 0.1, optimizer: str = "sgd", momentum: float = 0.9,
                    class_weight: str | dict | None = "balanced", sampling: str = "none", train_bn: bool = False,
                    augment: bool = True, val_fraction: float = 0.0, test_fraction: float | None = None,
                    patience: int | None = None, seed: int = 0, device: str = "auto", precision: str = "auto",
                    threads: int | None = None, workers: int | None = None, progress: bool = True,
                    resize: int | None = None, crop: int | None = None, max_train_images: int | None = None,
                    overwrite: bool = False, on_epoch: Callable[[dict], None] | None = None,
                    path_column: str | None = None, label_column: str | None = None,
                    split_column: str | None = None) -> dict:
    """Fine-tune ``backbone`` on ``images`` (folder tree or CSV manifest) into ``out_dir``; return the report.

    The report has classify's keys (balanced_accuracy etc. on the evaluation split) plus
    ``val_balanced_accuracy`` (the best validation score, which chose the epoch; None without a validation
    set: the last epoch is kept) and ``finetune``
    (settings and the epoch log). ``freeze`` is the leading share of backbone units kept fixed
    (1 = linear probe); ``freeze_until`` names the last frozen layer instead. ``epochs`` None sizes them
    from the step budget (``budget.step_sized_epochs`` of the images an epoch draws). ``lp_epochs`` trains the
    head alone first (LP-FT). ``on_epoch`` is called with each epoch's log row after its checkpoint
    is written. ``*_column`` name a manifest's columns (extract.reader.list_images). Raises
    ValueError for unusable options or data, before any long work.
    """
    options = dict(backbone=backbone, weights=weights, freeze=freeze, freeze_until=freeze_until, epochs=epochs,
                   lp_epochs=lp_epochs, batch_size=batch_size, lr=lr, backbone_lr_mult=backbone_lr_mult,
                   weight_decay=weight_decay, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                   optimizer=optimizer, momentum=momentum, class_weight=class_weight, sampling=sampling,
                   train_bn=train_bn, augment=augment, val_fraction=val_fraction, test_fraction=test_fraction,
                   patience=patience, seed=seed, resize=resize, crop=crop, max_train_images=max_train_images)
    check_options(**options, precision=precision)
    dev = pick_device(device)
    check_precision(precision, dev.type)  # fp16 on a CPU fails before the images are decoded
    out = ensure_writable(out_dir)
    log = _logger(progress)
    bb = get_backbone(backbone)
    prep = preprocess_config(bb, resize, crop)
    listing = list_images(images, path_column=path_column, label_column=label_column, split_column=split_column)
    labeled = listing.labels >= 0
    require_two_classes(listing.labels, listing.class_names, str(images))
    parse_class_weight(class_weight, listing.class_names)  # names checked before any work
    config = {**options, "images": str(listing.root), "images_fingerprint": _fingerprint(listing),
              "class_names": listing.class_names, "preprocess": prep}
    state = _resume_state(out, config, overwrite)
    winfo = locate_weights(bb, weights)  # a missing checkpoint fails here, before the images are decoded

    splits = choose_splits(listing, labeled, val_fraction, seed, test_fraction, max_train_images)
    if patience and not len(splits.val):  # it would stop nothing: say so before the images are decoded
        raise UsageError("--patience needs a validation set: pass --val-fraction F (a share of train), or give the "
                         "images a val split besides the test split")
    n_workers = default_workers() if workers is None else workers
    with _threads(threads):
        try:
            data = _decode_splits(listing, splits, prep, n_workers, progress, log)
        except KeyboardInterrupt:
            raise FinetuneInterrupted("interrupted while decoding images; nothing was trained yet") from None
        options["epochs"] = _epochs(options, data)
        _seed_everything(seed)  # the new head's initialization
        net = build_network(build_model(bb, winfo), bb, len(listing.class_names), freeze, freeze_until)
        place(net.model, dev)
        trainer = Trainer(net, data, listing.class_names, options, config, dev, precision, out, log, progress)
        trainer.run(state, on_epoch)
        return _finish(trainer, out, bb, winfo, listing, splits, data, options, prep, log)


def check_options(*, backbone: str, freeze_until, **options) -> None:
    """Fail in one line on a bad option, before images are read or a network is loaded: the declared
    ranges (``options.check_options``), then ``freeze_until`` against the architecture."""
    options_module.check_options({"backbone": backbone, **options})
    if freeze_until is not None:
        bb = get_backbone(backbone)
        with torch.device("meta"):  # the architecture only: no memory, no weights
            model = bb.build()
        frozen_count(backbone_units(model, head_name(model)), None, freeze_until, bb)


def _decode_splits(listing, splits, prep: dict, workers: int, progress: bool, log) -> dict:
    """Decode each role's images once; failed images are dropped from their role and recorded.

    Training images (and a validation set carved from them) are kept as resize x resize squares to
    augment from; the others are preprocessed exactly as ``extract`` does (resize, center crop)."""
    r, c, interp = prep["resize"], prep["crop"], prep["interpolation"]
    carved = splits.val_source.startswith("stratified")
    squares = np.concatenate([splits.train, splits.val]) if carved else splits.train
    others = splits.test if carved else np.concatenate([splits.test, splits.val])
    log(f"decoding {len(squares)} training images ({r}x{r}) and {len(others)} others ({c}x{c}), once")
    square, failures = decode(listing, squares, r, r, interp, workers, progress, "training images")
    cropped, more = decode(listing, others, r, c, interp, workers, progress, "evaluation images")
    decoded = {**dict(zip(squares.tolist(), square)), **dict(zip(others.tolist(), cropped))}
    failures += more

    def role(rows: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
        keep = np.array([i for i in rows.tolist() if decoded[i] is not None], dtype=np.int64)
        return [decoded[i] for i in keep.tolist()], listing.labels[keep], keep

    data = {"failures": failures, "crop": c, "interpolation": interp, "mean": prep["mean"], "std": prep["std"]}
    for name, rows in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        data[name], data[f"{name}_labels"], data[f"{name}_rows"] = role(rows)
    if len(set(data["train_labels"].tolist())) < 2:
        raise UsageError("fewer than two classes have readable training images; nothing to fine-tune")
    if not data["test"]:
        raise UsageError("no readable images in the evaluation split")
    return data


def _epochs(options: dict, data: dict) -> int:
    """The fine-tuning epochs: as given, else sized from the images one epoch draws (after resampling)."""
    if options["epochs"] is not None:
        return options["epochs"]
    drawn = sum(resampled_counts(data["train_labels"], options["sampling"]).values())
    return step_sized_epochs(drawn, options["batch_size"])


def _resume_state(out: Path, config: dict, overwrite: bool) -> dict | None:
    """The checkpoint to resume from, or None; refuses a checkpoint made with other options."""
    state = None if overwrite else checkpoint.load(out)
    if state is None:
        return None
    diff = checkpoint.config_difference(state.get("config", {}), config)
    if diff:
        raise UsageError(f"{out} holds a fine-tuning run made with other options or images ({'; '.join(diff)}); "
                         "use another --out, the same options to resume, or --overwrite to start again")
    return state


def _fingerprint(listing) -> str:
    digest = hashlib.sha256()
    for path, size, mtime, label, split in zip(listing.paths, listing.file_size, listing.file_mtime_ns,
                                               listing.labels, listing.splits):
        digest.update(f"{path}\0{size}\0{mtime}\0{label}\0{split}\n".encode())
    return digest.hexdigest()


@contextmanager
def _threads(threads: int | None):
    """All CPUs this process may use for training (or ``threads``), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or default_workers())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _logger(progress: bool):
    def log(message: str) -> None:
        if progress:
            print(f"[finetune] {message}", file=sys.stderr, flush=True)
    return log


def _finish(trainer: Trainer, out: Path, bb, winfo: WeightsInfo, listing, splits, data: dict, options: dict,
            prep: dict, log) -> dict:
    """Evaluate the chosen epoch on the evaluation split and write the weights, reports and curve."""
    trainer.use_best()
    probs = trainer.probabilities(data["test"])
    net = trainer.net
    backbone_bytes = _torch_bytes(backbone_state(net))
    sha = hashlib.sha256(backbone_bytes).hexdigest()
    probe = bb.build()
    taps = resolve_taps(bb, probe.eval(), ["penultimate"], "avg", prep["crop"])
    recipe = make_recipe(bb, WeightsInfo("file", BACKBONE_FILE, sha, str((out / BACKBONE_FILE).resolve())), taps, prep)
    report = finetune_report(trainer, listing, splits, data, options, probs, recipe, winfo)
    bundle = {"format": FORMAT_VERSION, "state_dict": {k: v.detach().cpu() for k, v in net.model.state_dict().items()},
              "backbone": bb.name, "head": net.head, "n_classes": len(listing.class_names),
              "class_names": listing.class_names, "preprocess": prep, "recipe": recipe,
              "initial_weights": winfo.as_dict(), "best_epoch": trainer.best["epoch"]}
    files = report_files(report)
    write_files(out, {**files, MODEL_FILE: _torch_bytes(bundle), BACKBONE_FILE: backbone_bytes,
                      CURVE: lambda path: plot_curve(trainer.history, path, trainer.best["epoch"])})
    log(summarize(report))
    return report


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()

