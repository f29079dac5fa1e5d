"""Measure what the scenario decision rests on: the training split's size, and how ImageNet-like it is.

Similarity costs one backbone pass over a stratified sample of the training images: the pass taps
the penultimate layer and a few earlier ones; the ImageNet head (the backbone's last Linear layer,
whose input is exactly the pooled penultimate code) turns the penultimate codes into 1000-way
predictions, so no second pass is needed.
"""
from __future__ import annotations

import csv
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_limits

from cnncodes.classify.models import build_pipeline, param_grid
from cnncodes.extract import extract_codes, get_backbone, open_codes
from cnncodes.extract.errors import UsageError
from cnncodes.extract.reader import ImageList
from cnncodes.extract.weights import build_model, locate_weights

from . import scenario as sc
from . import transferability as tr

MIN_PER_CLASS_SAMPLED = 2  # a stratified fold needs two images of each class
PROBE_FOLDS = 5
PROBE_CLASSIFIER = "softmax"  # classify's softmax on power-normalized codes, C by CV (much faster than svm at large C)
TOP_LAYER = "penultimate"
# Earlier taps probed in the same pass (every backbone's aliases, from `cnncodes layers`): middle stages,
# where features are still generic (seeds: "train the SVM classifier from activations somewhere earlier").
EARLY_LAYERS = {
    "mobilenet_v2": ("block2", "block3", "block4", "block5"),
    "alexnet": ("conv3", "conv5", "fc6"),
    "vgg16": ("block3", "block4", "block5"),
    "resnet18": ("block2", "block3"),
    "resnet50": ("block2", "block3"),
    **{f"efficientnet_lite{n}": ("block2", "block3", "block4", "block5") for n in range(3)},  # as MobileNetV2's
}


@dataclass
class Size:
    """Training-split counts (labeled images only)."""

    n_images: int
    n_classes: int
    per_class: dict[str, int]
    min_per_class: int
    median_per_class: float
    max_per_class: int
    imbalance_ratio: float  # largest class count / smallest
    split: str  # which images were counted: "train" or "all labeled"


@dataclass
class Similarity:
    """Evidence from one pass over the sample: the ImageNet head's predictions and linear probes per layer.

    LEEP, NCE and the probes are cross-validated on the same ``probe_folds`` stratified folds (seeded).
    """

    n_sampled: int
    head_entropy: float  # mean normalized entropy of the 1000-way softmax: 0 certain, 1 uniform
    leep: float  # cross-fitted: mean over the held-out folds
    nce: float  # cross-fitted likewise
    label_entropy: float  # H(Y) of the sample, the floor of LEEP and NCE
    probe_folds: int
    probe: dict[str, float] = field(default_factory=dict)  # layer -> CV balanced accuracy, top layer first
    probe_dims: dict[str, int] = field(default_factory=dict)
    leep_in_sample: float = 0.0  # reported for comparison: biased high, more so with more classes
    nce_in_sample: float = 0.0
    leep_per_fold: list[float] = field(default_factory=list)
    probe_per_fold: dict[str, list[float]] = field(default_factory=dict)  # layer -> balanced accuracy per fold
    seconds_extract: float = 0.0
    seconds_probe: float = 0.0

    @property
    def top_probe(self) -> float:
        return self.probe[TOP_LAYER]

    @property
    def best_early_layer(self) -> str:
        early = {k: v for k, v in self.probe.items() if k != TOP_LAYER}
        return max(early, key=early.get)

    def parts(self) -> sc.SimilarityParts:
        """The similarity's parts, each fold's LEEP fraction and probes giving its interval."""
        early = self.best_early_layer if len(self.probe) > 1 else TOP_LAYER
        fractions = [tr.explained_fraction(leep, self.label_entropy) for leep in self.leep_per_fold]
        return sc.similarity_parts(self.head_entropy, fractions, self.probe_per_fold[TOP_LAYER],
                                   self.probe_per_fold[early], self.n_sampled)


def training_rows(listing: ImageList) -> tuple[np.ndarray, str]:
    """Indices of the labeled training images: the train split when there is one, else every labeled image."""
    splits = np.asarray(listing.splits, dtype=object)
    labeled = listing.labels >= 0
    if (splits == "train").any():
        rows, which = np.flatnonzero(labeled & (splits == "train")), "train"
    else:
        rows, which = np.flatnonzero(labeled & (splits == "")), "all labeled"
    if len(rows) == 0:
        raise UsageError(f"{listing.root}: no labeled training images (expected root/CLASS/*, root/train/CLASS/* or "
                         "a manifest with a label column)")
    return rows, which


def measure_size(listing: ImageList, rows: np.ndarray, which: str) -> Size:
    """Images per class, number of classes and imbalance of ``rows``."""
    counts = np.bincount(listing.labels[rows], minlength=len(listing.class_names))
    present = np.flatnonzero(counts)
    values = counts[present]
    return Size(n_images=int(len(rows)), n_classes=int(len(present)),
                per_class={listing.class_names[c]: int(counts[c]) for c in present},
                min_per_class=int(values.min()), median_per_class=float(np.median(values)),
                max_per_class=int(values.max()), imbalance_ratio=float(values.max() / values.min()), split=which)


def check_per_class(per_class: dict[str, int], what: str) -> None:
    """Refuse, naming them, classes with fewer than MIN_PER_CLASS_SAMPLED ``what``: the probes'
    stratified folds need that many of every class."""
    few = [f"{name!r} ({n})" for name, n in per_class.items() if n < MIN_PER_CLASS_SAMPLED]
    if few:
        raise UsageError(f"{'class' if len(few) == 1 else 'classes'} {', '.join(few)} "
                         f"{'has' if len(few) == 1 else 'have'} fewer than {MIN_PER_CLASS_SAMPLED} {what}; advise needs "
                         f"{MIN_PER_CLASS_SAMPLED} of every class: add images, or leave the class out")


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions into ``labels`` of about ``n`` items, each class in proportion (at least 2 where it has them)."""
    rng = np.random.default_rng(seed)
    if n >= len(labels):
        return np.arange(len(labels))
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        quota = max(MIN_PER_CLASS_SAMPLED, round(n * len(members) / len(labels)))
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def write_manifest(path: Path, listing: ImageList, rows: np.ndarray) -> None:
    """A CSV manifest (absolute path, class name) of ``rows``, which extract reads like any other."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label"])
        for i in rows:
            out.writerow([str(listing.root / listing.paths[i]), listing.class_names[listing.labels[i]]])


def imagenet_logits(backbone: str, weights: str | None, codes: np.ndarray) -> np.ndarray:
    """The backbone's own classifier applied to pooled penultimate codes (its last Linear layer's input)."""
    import torch

    bb = get_backbone(backbone)
    model = build_model(bb, locate_weights(bb, weights))
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    if head.in_features != codes.shape[1]:
        raise ValueError(f"{backbone}: the head takes {head.in_features}-D inputs, the {TOP_LAYER} codes are "
                         f"{codes.shape[1]}-D; advise cannot compute the ImageNet predictions")
    weight = head.weight.detach().double().numpy()
    bias = head.bias.detach().double().numpy() if head.bias is not None else 0.0
    return codes.astype(np.float64) @ weight.T + bias


def probe_score(X: np.ndarray, y: np.ndarray, folds: list, seed: int) -> tuple[float, list[float]]:
    """Cross-validated balanced accuracy of classify's softmax (power normalization, C chosen by the same CV),
    on the given (train, held-out) ``folds``: the mean and each fold's score.

    The score is the best C's mean over the folds, so it leans slightly optimistic, equally for every layer.
    """
    pipe = build_pipeline(PROBE_CLASSIFIER, "power", "none", "balanced", seed)
    grid = param_grid(PROBE_CLASSIFIER, None, n_train_fold=len(y))
    search = GridSearchCV(pipe, grid, scoring="balanced_accuracy", error_score="raise", refit=False,
                          cv=folds)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the largest C may stop at max_iter; the CV score says so
        search.fit(X, y)
    best = search.best_index_
    return float(search.best_score_), [float(search.cv_results_[f"split{k}_test_score"][best])
                                       for k in range(len(folds))]


def measure_similarity(listing: ImageList, rows: np.ndarray, *, backbone: str, weights: str | None,
                       sample: int, seed: int, log, **extract_options) -> Similarity:
    """One extraction pass over a stratified sample of ``rows``, then head scores and probes on its codes."""
    layers = (TOP_LAYER, *EARLY_LAYERS.get(backbone, ()))
    picked = rows[stratified_sample(listing.labels[rows], sample, seed)]
    log(f"one pass of {backbone} over {len(picked)} sampled training images, tapping {', '.join(layers)}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-advise-") as tmp:
        manifest = Path(tmp) / "sample.csv"
        write_manifest(manifest, listing, picked)
        started = time.perf_counter()
        result = extract_codes(manifest, Path(tmp) / "codes.h5", backbone=backbone, layers=layers, pool="avg",
                               weights=weights, **extract_options)
        seconds_extract = time.perf_counter() - started
        cf = open_codes(result.path)
    ok = cf.rows.ok.astype(bool)
    if ok.sum() < 2 * MIN_PER_CLASS_SAMPLED:
        raise UsageError(f"only {int(ok.sum())} of the {len(picked)} sampled images could be read")
    y = cf.rows.labels[ok]
    readable = np.bincount(y, minlength=len(cf.class_names))
    check_per_class(dict(zip(cf.class_names, readable.tolist())), "readable sampled images")
    probs = tr.softmax(imagenet_logits(backbone, weights, cf.codes[TOP_LAYER][ok]))
    folds = int(min(PROBE_FOLDS, readable[np.unique(y)].min()))
    started = time.perf_counter()
    splits = tr.folds_of(y, folds, seed)  # one set of folds for LEEP, NCE and every probe
    probe, per_fold, dims = {}, {}, {}
    for layer in layers:
        log(f"linear probe on {layer}: {folds}-fold CV")
        X = np.asarray(cf.codes[layer][ok], dtype=np.float32)
        (probe[layer], per_fold[layer]), dims[layer] = probe_score(X, y, splits, seed), int(X.shape[1])
    leep_per_fold = tr.leep_cv(probs, y, folds, seed)
    return Similarity(n_sampled=int(ok.sum()), head_entropy=tr.normalized_entropy(probs),
                      leep=float(leep_per_fold.mean()), nce=float(tr.nce_cv(probs, y, folds, seed).mean()),
                      label_entropy=tr.label_entropy(y), probe_folds=folds, probe=probe, probe_dims=dims,
                      leep_in_sample=tr.leep(probs, y), nce_in_sample=tr.nce(probs, y),
                      leep_per_fold=[float(v) for v in leep_per_fold], probe_per_fold=per_fold,
                      seconds_extract=seconds_extract, seconds_probe=time.perf_counter() - started)
