"""finetune_images: fine-tune a backbone with a new head on an image collection, with classify's reports.

Per step: warm-up then cosine learning rates (head at ``lr``, backbone at ``lr x backbone_lr_mult``),
label-smoothed, class-weighted cross-entropy, SGD with momentum or AdamW. After every epoch the
validation set (never the evaluation split) is scored and a checkpoint is written; the best epoch's
weights are kept. Rerunning the same command resumes after the last completed epoch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from classify.fileio import ensure_writable, write_files
from classify.data import coverage_notes, require_two_classes
from classify.models import class_weight_values, parse_class_weight
from classify.report import binary_metrics, build_report, missing_test_classes, report_files, summarize
from extract.backbones import get_backbone
from extract.names import FINETUNED_MODEL
from extract.device import autocast_dtype, check_precision, pick_device, pick_precision
from extract.outputs import guards_output
from extract.reader import list_images
from extract.recipe import make_recipe, preprocess_config
from extract.taps import resolve_taps
from extract.weights import FINETUNED_BACKBONE, WeightsInfo, build_model, locate_weights

from . import checkpoint
from . import options as options_module
from .data import (CachedImages, choose_splits, decode, default_workers, epoch_sampler, normalize,
                   resampled_counts)
from .model import (Network, backbone_state, backbone_units, build_network, frozen_count, head_name, param_groups,
                    set_trainable, train_mode)

MODEL_FILE = FINETUNED_MODEL  # classify.runs tells the kinds of run apart by it
BACKBONE_FILE = FINETUNED_BACKBONE  # torchvision key naming, loads with extract --weights
EPOCH_LOG = "epochs.jsonl"
CURVE = "learning_curve.png"
FORMAT_VERSION = 1
FEW_IMAGES = 5  # a class with fewer training images than this, each weighing
HEAVY = 4.0  # this many times an image of the lightest class or more, is named in a warning


class FinetuneInterrupted(Exception):
    """Ctrl-C during a run; the message says what is saved and how to resume."""


@guards_output("out_dir", images="images", resumes=checkpoint.exists)  # a rerun of the same command resumes
def finetune_images(images: str | os.PathLike, out_dir: str | os.PathLike, *, backbone: str = "mobilenet_v2",
                    weights: str | None = None, freeze: float | None = 1 / 3, freeze_until: str | None = None,
                    epochs: int = 6, lp_epochs: int = 0, batch_size: int = 32, lr: float = 0.01,
                    backbone_lr_mult: float = 0.1, weight_decay: float = 1e-4, warmup_epochs: float = 1.0,
                    label_smoothing: float = 0.1, optimizer: str = "sgd", momentum: float = 0.9,
                    class_weight: str | dict | None = "balanced", sampling: str = "none", train_bn: bool = False,
                    augment: bool = True, val_fraction: float = 0.15, test_fraction: float | None = None,
                    patience: int | None = None, seed: int = 0, device: str = "auto", precision: str = "auto",
                    threads: int | None = None, workers: int | None = None, progress: bool = True,
                    resize: int | None = None, crop: int | None = None, max_train_images: int | None = None,
                    overwrite: bool = False, on_epoch: Callable[[dict], None] | None = None,
                    path_column: str | None = None, label_column: str | None = None,
                    split_column: str | None = None) -> dict:
    """Fine-tune ``backbone`` on ``images`` (folder tree or CSV manifest) into ``out_dir``; return the report.

    The report has classify's keys (balanced_accuracy etc. on the evaluation split) plus
    ``val_balanced_accuracy`` (the best validation score, which chose the epoch) and ``finetune``
    (settings and the epoch log). ``freeze`` is the leading share of backbone units kept fixed
    (1 = linear probe); ``freeze_until`` names the last frozen layer instead. ``lp_epochs`` trains the
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
    n_workers = default_workers() if workers is None else workers
    with _threads(threads):
        try:
            data = _decode_splits(listing, splits, prep, n_workers, progress, log)
        except KeyboardInterrupt:
            raise FinetuneInterrupted("interrupted while decoding images; nothing was trained yet") from None
        _seed_everything(seed)  # the new head's initialization
        net = build_network(build_model(bb, winfo), bb, len(listing.class_names), freeze, freeze_until)
        net.model.to(dev)
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


def lr_lambda(warmup_steps: int, total_steps: int, start: int = 0) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: 0 before ``start``, linear warm-up, then cosine to 0."""
    def factor(step: int) -> float:
        step -= start
        if step < 0:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
    return factor


def loss_weights(class_weight, names: list[str], y_train: np.ndarray, sampling: str) -> np.ndarray:
    """Per-class loss weights (1 where none is set). ``balanced`` comes from the counts an epoch draws,
    as classify weights the resampled rows: with ``--sampling`` the draws are balanced already, so the
    weights do not correct the imbalance a second time."""
    drawn = resampled_counts(y_train, sampling)
    y_drawn = np.repeat(list(drawn), list(drawn.values()))
    weights = class_weight_values(parse_class_weight(class_weight, names), y_drawn) or {}
    return np.array([weights.get(c, 1.0) for c in range(len(names))])


def heavy_class_notes(weights: np.ndarray, y_train: np.ndarray, sampling: str, names: list[str]) -> list[str]:
    """A warning for each class with fewer than FEW_IMAGES training images whose images each weigh HEAVY
    times an image of the lightest class or more (loss weight x draws per image): a handful of images
    then steers the class. The weights are kept; the warning says how to change them."""
    counts = np.bincount(y_train, minlength=len(names))
    drawn = resampled_counts(y_train, sampling)
    per_image = {c: weights[c] * drawn[c] / counts[c] for c in drawn}
    lightest = min(per_image.values())
    return [f"class {names[c]!r} has {counts[c]} training image(s), each weighing {per_image[c] / lightest:.1f}x an "
            f"image of the lightest class (loss weight {weights[c]:.3g}, sampling {sampling}); kept as set: add "
            "images, or lower it with --class-weight none or CLASS=W" for c in sorted(per_image)
            if counts[c] < FEW_IMAGES and per_image[c] >= HEAVY * lightest]


class Trainer:
    """The epoch loop over cached images, with validation, checkpoints and the epoch log."""

    def __init__(self, net: Network, data: dict, class_names: list[str], options: dict, config: dict,
                 device: torch.device, precision: str, out: Path, log, progress: bool):
        self.net, self.data, self.names, self.opt, self.config = net, data, class_names, options, config
        self.device, self.out, self.log, self.progress = device, out, log, progress
        self.precision = pick_precision(precision, device, training=True)
        self.amp_dtype = autocast_dtype(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None  # fp16 needs loss scaling
        y_train = data["train_labels"]
        n_draw = sum(resampled_counts(y_train, options["sampling"]).values())
        self.drop_last = options["train_bn"] and n_draw > options["batch_size"]
        self.steps_per_epoch = max(1, (n_draw // options["batch_size"]) if self.drop_last
                                   else math.ceil(n_draw / options["batch_size"]))
        self.total_epochs = options["lp_epochs"] + options["epochs"]
        self.class_weights = loss_weights(options["class_weight"], class_names, y_train, options["sampling"])
        self.weight_notes = heavy_class_notes(self.class_weights, y_train, options["sampling"], class_names)
        for note in self.weight_notes:
            print(f"[finetune] warning: {note}", file=sys.stderr, flush=True)
        self.loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(self.class_weights, dtype=torch.float32, device=device),
                                           label_smoothing=options["label_smoothing"])
        self.groups = param_groups(net, options["lr"], options["backbone_lr_mult"], options["weight_decay"])
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lambdas())
        self.history: list[dict] = []
        self.best = {"epoch": 0, "score": None, "state": None}
        self.finished, self.stopped_early = False, False
        self.used_lr: dict[str, float | None] = {}

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.opt["optimizer"] == "sgd":
            return torch.optim.SGD(self.groups, lr=self.opt["lr"], momentum=self.opt["momentum"])
        return torch.optim.AdamW(self.groups, lr=self.opt["lr"])

    def _lambdas(self) -> list[Callable[[int], float]]:
        spe, lp, ft = self.steps_per_epoch, self.opt["lp_epochs"], self.opt["epochs"]
        warm = int(round(self.opt["warmup_epochs"] * spe))
        head = lr_lambda(warm, (lp + ft) * spe)
        body = lr_lambda(warm, ft * spe, start=lp * spe)
        return [head if g["part"] == "head" else body for g in self.optimizer.param_groups]

    def run(self, state: dict | None, on_epoch=None) -> None:
        """Train from ``state`` (a checkpoint, or None to start) to the last epoch or an early stop."""
        start = self._restore(state) if state else 0
        if self.finished:
            self.log(f"all {len(self.history)} epochs were already trained; writing the outputs again")
            return
        if start:
            self.log(f"resuming after epoch {start} of {self.total_epochs} (from {self.out / checkpoint.CHECKPOINT})")
        for epoch in range(start, self.total_epochs):
            try:
                row = self._epoch(epoch)
            except KeyboardInterrupt:
                saved = (f"epochs 1-{epoch} are saved in {self.out / checkpoint.CHECKPOINT}" if epoch
                         else "no epoch was completed")
                raise FinetuneInterrupted(f"interrupted during epoch {epoch + 1} of {self.total_epochs}; {saved}. "
                                          "Run the same command again to resume.") from None
            if on_epoch:
                on_epoch(row)
            if self.finished:
                break

    def _epoch(self, epoch: int) -> dict:
        lp = epoch < self.opt["lp_epochs"]
        set_trainable(self.net, backbone_too=not lp)
        train_mode(self.net, self.opt["train_bn"], backbone_too=not lp)
        dataset = CachedImages(self.data["train"], self.data["train_labels"], self.data["crop"], self.opt["augment"],
                               self.data["interpolation"])
        loader = DataLoader(dataset, batch_size=self.opt["batch_size"], drop_last=self.drop_last,
                            sampler=epoch_sampler(self.data["train_labels"], self.opt["sampling"], self.opt["seed"],
                                                  epoch))
        phase = "linear probe" if lp else "fine-tune"
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.total_epochs} ({phase})", unit="batch",
                   disable=not self.progress, file=sys.stderr, leave=True)
        started, seen, total_loss = time.perf_counter(), 0, 0.0
        for x, y in bar:
            loss = self._step(x, y)
            seen += len(y)
            total_loss += loss * len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{seen / (time.perf_counter() - started):.1f}")
        train_seconds = time.perf_counter() - started
        score, val_loss = self.validate()
        if score is not None:
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}", img_s=f"{seen / train_seconds:.1f}",
                            val=f"{score:.3f}")
        bar.close()
        row = {"epoch": epoch + 1, "phase": "lp" if lp else "ft", "train_loss": total_loss / max(seen, 1),
               "val_balanced_accuracy": score, "val_loss": val_loss, "lr_head": self.used_lr.get("head"),
               "lr_backbone": self.used_lr.get("backbone"),
               "images": seen, "train_seconds": round(train_seconds, 3),
               "seconds": round(time.perf_counter() - started, 3),
               "images_per_second": round(seen / max(train_seconds, 1e-9), 2)}
        self._keep_best(row)
        self._save_checkpoint()
        self._write_log()
        self.log(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}"
                 + (f", validation balanced accuracy {score:.4f}" if score is not None else "")
                 + f", {row['images_per_second']:.1f} img/s" + (" (best so far)" if self.best["epoch"] == epoch + 1
                                                                 else ""))
        return row

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = normalize(x.to(self.device, non_blocking=True), self.data["mean"], self.data["std"])
        y = y.to(self.device, non_blocking=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext())
        with autocast:
            loss = self.loss_fn(self.net.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.used_lr = {part: self._lr(part) for part in ("head", "backbone")}  # the log shows the lr last used
        self.scheduler.step()
        return float(loss.detach())

    def _lr(self, part: str) -> float | None:
        lrs = [g["lr"] for g in self.optimizer.param_groups if g["part"] == part]
        return lrs[0] if lrs else None

    def probabilities(self, images: list[torch.Tensor]) -> np.ndarray:
        """Softmax outputs for cached images (center crop, eval mode), in order."""
        self.net.model.eval()
        return forward_probs(self.net.model, images, self.data["crop"], self.data["mean"], self.data["std"],
                             self.device, self.amp_dtype, self.opt["batch_size"])

    def validate(self) -> tuple[float | None, float | None]:
        """Balanced accuracy and loss (the training loss's weights and smoothing) on the validation set."""
        if not self.data["val"]:
            return None, None
        self.net.model.eval()
        logits = forward_logits(self.net.model, self.data["val"], self.data["crop"], self.data["mean"],
                                self.data["std"], self.device, self.amp_dtype, self.opt["batch_size"])
        y = torch.as_tensor(self.data["val_labels"], dtype=torch.long)
        with torch.no_grad():
            loss = float(self.loss_fn(logits.to(self.device), y.to(self.device)))
        return float(balanced_accuracy_score(y.numpy(), logits.argmax(1).numpy())), loss

    def _keep_best(self, row: dict) -> None:
        self.history.append(row)
        score, epoch = row["val_balanced_accuracy"], row["epoch"]
        if score is None or self.best["score"] is None or score > self.best["score"]:
            self.best = {"epoch": epoch, "score": score,
                         "state": {k: v.detach().cpu().clone() for k, v in self.net.model.state_dict().items()}}
        patience = self.opt["patience"]
        fine_tuning = row["phase"] == "ft"
        if patience and fine_tuning and score is not None and epoch - self.best["epoch"] >= patience:
            self.stopped_early = True
        self.finished = self.stopped_early or epoch == self.total_epochs

    def _save_checkpoint(self) -> None:
        checkpoint.save(self.out, {
            "format": FORMAT_VERSION, "config": self.config, "epoch": len(self.history),
            "model": self.net.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "sampler": {"seed": self.opt["seed"], "next_epoch": len(self.history)}, "rng": checkpoint.rng_state(),
            "best": self.best, "history": self.history, "finished": self.finished, "stopped_early": self.stopped_early,
        })

    def _restore(self, state: dict) -> int:
        self.net.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        self.best, self.history = state["best"], list(state["history"])
        self.finished, self.stopped_early = state["finished"], state["stopped_early"]
        return int(state["epoch"])

    def _write_log(self) -> None:
        text = "".join(json.dumps(row) + "\n" for row in self.history)
        write_files(self.out, {EPOCH_LOG: text})

    def use_best(self) -> None:
        if self.best["state"] is not None:
            self.net.model.load_state_dict(self.best["state"])


def forward_probs(model: nn.Module, images: list[torch.Tensor], crop: int, mean, std, device: torch.device,
                  amp_dtype: torch.dtype | None, batch_size: int) -> np.ndarray:
    """Softmax outputs of ``model`` for uint8 images, center-cropped to ``crop``, in batches."""
    if not images:
        return np.zeros((0, 0), np.float32)
    return torch.softmax(forward_logits(model, images, crop, mean, std, device, amp_dtype, batch_size), 1).numpy()


def forward_logits(model: nn.Module, images: list[torch.Tensor], crop: int, mean, std, device: torch.device,
                   amp_dtype: torch.dtype | None, batch_size: int) -> torch.Tensor:
    """float32 outputs of ``model`` (on the CPU) for uint8 images, center-cropped to ``crop``, in batches."""
    from torchvision.transforms.v2.functional import center_crop

    out = []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with torch.inference_mode(), autocast:
        for i in range(0, len(images), batch_size):
            batch = torch.stack([center_crop(im, [crop, crop]) for im in images[i:i + batch_size]]).to(device)
            out.append(model(normalize(batch, mean, std)).float().cpu())
    return torch.cat(out)


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
        raise ValueError("fewer than two classes have readable training images; nothing to fine-tune")
    if not data["test"]:
        raise ValueError("no readable images in the evaluation split")
    return data


def _resume_state(out: Path, config: dict, overwrite: bool) -> dict | None:
    """The checkpoint to resume from, or None; refuses a checkpoint made with other options."""
    state = None if overwrite else checkpoint.load(out)
    if state is None:
        return None
    diff = checkpoint.config_difference(state.get("config", {}), config)
    if diff:
        raise ValueError(f"{out} holds a fine-tuning run made with other options or images ({'; '.join(diff)}); "
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
    notes.append(f"validation set (chooses the epoch): {splits.val_source}; the evaluation split chose nothing")
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
