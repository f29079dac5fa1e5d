"""Trainer: the fine-tuning epoch loop, with its learning-rate schedule, loss weights and forward passes.

Per step: warm-up then cosine learning rates (head at ``lr``, backbone at ``lr x backbone_lr_mult``),
label-smoothed, class-weighted cross-entropy, SGD with momentum or AdamW. After every epoch the
validation set, if any (never the evaluation split), is scored and a checkpoint is written; the best
epoch's weights are kept, else the last's. Kept apart from finetune.train (the entry point): the loop reads on its own.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnncodes.classify.fileio import write_files
from cnncodes.classify.models import class_weight_values, parse_class_weight
from cnncodes.extract.device import autocast_dtype, pick_precision

from . import checkpoint
from .data import CachedImages, epoch_sampler, normalize, resampled_counts
from .model import Network, folded_batchnorm, fused_forward, param_groups, set_trainable, train_mode

EPOCH_LOG = "epochs.jsonl"
FORMAT_VERSION = 1  # of the checkpoint and the saved model bundle
FEW_IMAGES = 5  # a class with fewer training images than this, each weighing
HEAVY = 4.0  # this many times an image of the lightest class or more, is named in a warning


class FinetuneInterrupted(Exception):
    """Ctrl-C during a run; the message says what is saved and how to resume."""



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
        with fused_forward(self.net, backbone_too=not lp):
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
                 + f", {row['images_per_second']:.1f} img/s"
                 + (" (best so far)" if score is not None and self.best["epoch"] == epoch + 1 else ""))
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
    """float32 outputs of ``model`` in eval mode (on the CPU) for uint8 images, center-cropped to ``crop``, in batches,
    BatchNorm folded (``folded_batchnorm``)."""
    from torchvision.transforms.v2.functional import center_crop

    out = []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with torch.inference_mode(), autocast, folded_batchnorm(model):
        for i in range(0, len(images), batch_size):
            batch = torch.stack([center_crop(im, [crop, crop]) for im in images[i:i + batch_size]]).to(device)
            out.append(model(normalize(batch, mean, std)).float().cpu())
    return torch.cat(out)
