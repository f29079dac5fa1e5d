"""From evidence to one of the seeds' four transfer-learning scenarios (pure functions, no I/O).

The seeds (cs231n "When and how to fine-tune?", transfer-learning-notes-2/3/5) decide by two things:
dataset size (small / large) and similarity to ImageNet (similar / very different):

1. small, similar: a linear classifier on the top layer's CNN codes.
2. large, similar: fine-tune, freezing about 60-80% of the network (notes-3).
3. small, different: a linear classifier on codes from earlier in the network (cs231n), or fine-tune
   with about the first third or half frozen (notes-3).
4. large, different: fine-tune through the entire network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import stats

# "Large" starts at 1,000 training images per class (median over classes). The seeds give no number;
# the anchor is the source task's own scale, which they quote: ImageNet's 1.2 million images in 1000
# categories, about 1,200 per class. With as many examples per class as the network was trained on,
# refitting its upper layers is no longer a small-data problem.
LARGE_FROM_PER_CLASS = 1000
# "Similar" from 0.64 on the similarity scale (mean of two label-aware scores in [0, 1], see SimilarityParts):
# fitted to the six calibration sets' measured winners, codes or `finetune --freeze 0.33` with its defaults
# (bench/RESULTS.md, issue 24): the midpoint of the gap between clothing6 (fine-tuning won) and hymenoptera
# (codes won). Left out one set at a time the fit agrees on 5 of 6; digits (8x8 scans, codes won) sits below
# sets where fine-tuning won. Labels the network knows nothing about sit near 0.25.
SIMILAR_FROM = 0.64
INTERVAL_LEVEL = 0.95  # of the similarity's confidence interval over the cross-validation folds
# Freeze fractions for `cnncodes finetune --freeze` (of the backbone, from the input side):
FREEZE_LARGE_SIMILAR = 0.7  # notes-3, scenario 2: "freeze approximately 60% - 80% of the pretrained network"
FREEZE_SMALL_DIFFERENT = 0.33  # notes-3, scenario 3: "freeze approximately the first third or half"
FREEZE_LARGE_DIFFERENT = 0.0  # cs231n / notes-3, scenario 4: "fine-tune through the entire network"

SCENARIOS = {
    1: "small and similar to ImageNet: a linear classifier on the top layer's CNN codes",
    2: "large and similar to ImageNet: fine-tune the upper part of the network",
    3: "small and very different from ImageNet: a linear classifier on earlier-layer codes, or fine-tune "
       "with the first third frozen",
    4: "large and very different from ImageNet: fine-tune the entire network",
}


@dataclass(frozen=True)
class SimilarityParts:
    """The scores in [0, 1] (higher = more ImageNet-like) behind the similarity, all measured out of sample.

    Only the label-aware parts enter the mean: head confidence is high for any photo ImageNet's classes
    describe, whatever the labels ask, so it is reported beside them and not counted.
    """

    head_confidence: float  # 1 - mean normalized entropy of the ImageNet head's 1000-way softmax (reported only)
    leep_fraction: float  # share of the label entropy H(Y) that cross-fitted LEEP says the ImageNet head explains
    top_layer_preference: float  # err(early) / (err(early) + err(top)) of the cross-validated linear probes
    interval: tuple[float, float]  # INTERVAL_LEVEL confidence interval of the similarity

    @property
    def similarity(self) -> float:
        return similarity_of(self.leep_fraction, self.top_layer_preference)


def similarity_of(leep_fraction: float, top_layer_preference: float) -> float:
    """The similarity to ImageNet: the mean of the two label-aware scores (one rule for the point and each fold)."""
    return (leep_fraction + top_layer_preference) / 2


def top_layer_preference(top_accuracy: float, early_accuracy: float, n_images: int) -> float:
    """How much better the top layer's codes classify than the best earlier layer's, in [0, 1].

    ``err_early / (err_early + err_top)`` with errors = 1 - balanced accuracy, each plus one image's
    worth (1 / n) so that two perfect probes give 0.5 rather than 0 / 0. 0.5 = equally good; towards
    1 the top layer (ImageNet-specific features) wins, towards 0 an earlier, more generic layer wins.
    """
    smooth = 1.0 / max(n_images, 1)
    err_top, err_early = 1.0 - top_accuracy + smooth, 1.0 - early_accuracy + smooth
    return err_early / (err_early + err_top)


def similarity_parts(head_entropy: float, leep_fractions: Sequence[float], top_scores: Sequence[float],
                     early_scores: Sequence[float], n_images: int) -> SimilarityParts:
    """The parts from per-fold evidence (the same folds for LEEP and both probes), with a t interval over the folds.

    The interval is the fold spread: the folds share training images, so it is, if anything, narrow.
    """
    folds = len(leep_fractions)
    per_fold = [similarity_of(f, top_layer_preference(t, e, max(n_images // folds, 1)))
                for f, t, e in zip(leep_fractions, top_scores, early_scores)]
    half = stats.t.ppf((1 + INTERVAL_LEVEL) / 2, folds - 1) * np.std(per_fold, ddof=1) / np.sqrt(folds)
    leep_fraction = float(np.mean(leep_fractions))
    preference = top_layer_preference(float(np.mean(top_scores)), float(np.mean(early_scores)), n_images)
    center = similarity_of(leep_fraction, preference)
    interval = (round(float(max(center - half, 0.0)), 4), round(float(min(center + half, 1.0)), 4))
    return SimilarityParts(1.0 - head_entropy, leep_fraction, preference, interval)


def is_large(median_per_class: float) -> bool:
    return median_per_class >= LARGE_FROM_PER_CLASS


def is_similar(similarity: float) -> bool:
    return similarity >= SIMILAR_FROM


def scenario_for(median_per_class: float, similarity: float) -> int:
    """The seeds' scenario number: 1 small+similar, 2 large+similar, 3 small+different, 4 large+different."""
    large, similar = is_large(median_per_class), is_similar(similarity)
    return {(False, True): 1, (True, True): 2, (False, False): 3, (True, False): 4}[(large, similar)]
