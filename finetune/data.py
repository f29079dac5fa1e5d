"""Images for fine-tuning: splits, the decoded-once cache, augmentation and the epoch sampler.

Splits follow classify's rule: the split column's train rows fit, its test rows (else its val
rows) are the evaluation split, which is only reported. The validation set that picks the epoch
is the val split when a test split exists besides it, else a stratified share carved from train.
Every image is decoded once per run: training images as ``resize`` x ``resize`` uint8 squares
(augmented from memory each epoch), the others exactly as ``extract`` preprocesses them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from cnncodes.classify.split import evaluation_split
from cnncodes.extract.batches import decoder_init, fork_context
from cnncodes.extract.errors import UsageError
from cnncodes.extract.images import ImageDataset
from cnncodes.extract.reader import ImageList

from .options import check_options

DEFAULT_TEST_FRACTION = 0.25  # as classify, when there is no split column
CROP_SCALE = (0.25, 1.0)  # RandomResizedCrop area range: milder than ImageNet's 0.08 for short fine-tunes


@dataclass
class Splits:
    """Row indices into the listing for each role, and where they came from."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    split_source: str
    val_source: str
    notes: list[str] = field(default_factory=list)


def choose_splits(listing: ImageList, usable: np.ndarray, val_fraction: float, seed: int,
                  test_fraction: float | None = None, max_train: int | None = None) -> Splits:
    """Assign usable (labeled, decodable) rows to train / validation / evaluation."""
    split = np.asarray(listing.splits, dtype=str)
    y = listing.labels
    rows = np.flatnonzero(usable)
    notes: list[str] = []
    train = rows[split[rows] == "train"]
    held_name = evaluation_split(split, np.asarray(usable, bool))  # classify's one rule: test, else val
    if test_fraction is None and held_name:
        test = rows[split[rows] == held_name]
        split_source = f"split column (train / {held_name})"
        val = rows[split[rows] == "val"] if held_name == "test" else np.zeros(0, np.int64)
        unused = len(rows) - len(train) - len(test) - len(val)
        if unused:
            notes.append(f"{unused} image(s) in other splits were not used")
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train, test = _stratified(rows, y, fraction, seed, "evaluation")
        split_source = f"stratified {fraction:g} test fraction (seed {seed})"
        if test_fraction is None:
            split_source += ": the images have no usable train/test split folders or column"
            notes.append(split_source)
        val = np.zeros(0, np.int64)
    if max_train is not None and len(train) > max_train:
        train, _ = _stratified(train, y, len(train) - max_train, seed, "subsample")
        notes.append(f"training images subsampled to {len(train)} (stratified, seed {seed})")
    if len(val):
        val_source = "the val split"
    elif val_fraction > 0:
        train, val = _stratified(train, y, val_fraction, seed, "validation")
        val_source = f"stratified {val_fraction:g} of the training split (seed {seed})"
    else:
        val_source = "none: every training image trains, the last epoch is kept (--val-fraction F carves one)"
    return Splits(np.sort(train), np.sort(val), np.sort(test), split_source, val_source, notes)


def _stratified(rows: np.ndarray, y: np.ndarray, share: float, seed: int, what: str):
    """Stratified (kept, taken) split of ``rows``; ``share`` < 1 is a fraction, else a count."""
    counts = np.bincount(y[rows]) if len(rows) else np.zeros(0, int)
    n_classes = int((counts > 0).sum())
    n_take = int(round(share * len(rows))) if share < 1 else int(share)
    n_take = max(n_take, n_classes)
    if n_classes < 2 or counts[counts > 0].min() < 2 or len(rows) - n_take < n_classes:
        raise UsageError(f"too few images to carve a stratified {what} set from {len(rows)} images "
                         f"(every class needs at least 2){'; pass --val-fraction 0' if what == 'validation' else ''}")
    kept, taken = train_test_split(rows, test_size=n_take, random_state=seed, stratify=y[rows])
    return np.sort(kept), np.sort(taken)


def decode(listing: ImageList, rows: np.ndarray, resize: int, crop: int, interpolation: str, workers: int,
           progress: bool, what: str) -> tuple[list[torch.Tensor | None], list[tuple[str, str]]]:
    """Decode ``rows`` once to uint8 [3, crop, crop] tensors (None where unreadable) and the failures."""
    dataset = ImageDataset(listing.root, [listing.paths[i] for i in rows], resize, crop, interpolation)
    context = fork_context()
    workers = workers if context else 0
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context=context if workers else None,
                        worker_init_fn=decoder_init if workers else None)
    images, failures = [], []
    for k, (image, ok, reason) in enumerate(tqdm(loader, total=len(dataset), desc=f"decoding {what}",
                                                 unit="img", disable=not progress, leave=False)):
        images.append(image.clone() if ok else None)
        if not ok:
            failures.append((dataset.paths[k], reason))
    return images, failures


def default_workers() -> int:
    """Decode workers for the one-time cache: every CPU this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class CachedImages(Dataset):
    """Cached uint8 images with labels; ``augment`` adds RandomResizedCrop + horizontal flip."""

    def __init__(self, images: list[torch.Tensor], labels: np.ndarray, crop: int, augment: bool,
                 interpolation: str = "bilinear"):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)
        mode = v2.InterpolationMode(interpolation)
        self.transform = (v2.Compose([v2.RandomResizedCrop(crop, scale=CROP_SCALE, interpolation=mode, antialias=True),
                                      v2.RandomHorizontalFlip()]) if augment else v2.CenterCrop(crop))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def normalize(batch: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 normalized with the backbone's ImageNet mean and std, channels-last
    like the model (``model.place``)."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return ((batch.float() / 255.0 - m) / s).contiguous(memory_format=torch.channels_last)


def epoch_sampler(labels: np.ndarray, sampling: str, seed: int, epoch: int) -> Sampler:
    """The order of one epoch: a shuffle, or class-balanced draws (over: to the largest class, with
    replacement; under: to the smallest, without). Seeded by (seed, epoch), so a resumed run draws
    the same epochs as an uninterrupted one."""
    check_options({"sampling": sampling})
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if sampling == "none":
        return RandomSampler(range(len(labels)), generator=generator)
    counts = np.bincount(labels)
    present = counts[counts > 0]
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    if sampling == "over":
        return WeightedRandomSampler(weights, int(present.max() * len(present)), replacement=True, generator=generator)
    return WeightedRandomSampler(weights, int(present.min() * len(present)), replacement=False,  # under
                                 generator=generator)


def resampled_counts(labels: np.ndarray, sampling: str) -> dict[int, int]:
    """Images per class an epoch draws (in expectation for the weighted samplers)."""
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    if sampling == "none":
        return {int(c): int(counts[c]) for c in present}
    target = counts[present].max() if sampling == "over" else counts[present].min()
    return {int(c): int(target) for c in present}
