"""Transferability scores of the ImageNet head on target labels: entropy, LEEP and NCE (plain numpy).

``probs`` is an ``[n, Z]`` matrix of the source head's softmax outputs (rows sum to 1), ``labels``
an ``[n]`` int array of target classes. All logarithms are natural (nats).
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

_TINY = 1e-12  # keeps log(0) finite; far below any probability the scores can resolve
# Cross-fitted P(y | z) is shrunk towards the class prior by this many images' worth per source class z,
# so that a z the training folds barely saw predicts the prior instead of a noisy 0 / 1.
PRIOR_IMAGES = 1.0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def normalized_entropy(probs: np.ndarray) -> float:
    """Mean entropy of the rows divided by log(Z): 0 = always certain, 1 = always uniform over the Z classes."""
    p = np.asarray(probs, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, _TINY, None))).sum(axis=1)
    return float(entropy.mean() / np.log(p.shape[1]))


def label_entropy(labels: np.ndarray) -> float:
    """Entropy H(Y) of the empirical target label distribution: the log-loss of always guessing the class prior."""
    _, counts = np.unique(labels, return_counts=True)
    prior = counts / counts.sum()
    return float(-(prior * np.log(prior)).sum())


def leep(probs: np.ndarray, labels: np.ndarray) -> float:
    """Log Expected Empirical Prediction (Nguyen et al., ICML 2020).

    The empirical conditional P(y | z) of target label y given source label z is estimated from the
    soft joint ``P(y, z) = 1/n * sum_{i: y_i = y} probs[i, z]``; LEEP is the mean log-likelihood of the
    true labels under the "expected empirical predictor" ``sum_z P(y | z) probs[i, z]``. It is 0 at
    best (a head whose outputs determine the label) and -H(Y) for a head whose outputs ignore the image.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = _dense_labels(labels)
    joint = np.zeros((y.max() + 1, p.shape[1]))
    np.add.at(joint, y, p)
    joint /= len(y)
    conditional = joint / np.clip(joint.sum(axis=0, keepdims=True), _TINY, None)  # P(y | z)
    expected = (p * conditional[y]).sum(axis=1)  # sum_z P(y_i | z) probs[i, z]
    return float(np.log(np.clip(expected, _TINY, None)).mean())


def nce(probs: np.ndarray, labels: np.ndarray) -> float:
    """Negative Conditional Entropy -H(Y | Z) (Tran et al., ICCV 2019) with Z the head's top-1 class.

    0 when every predicted ImageNet class holds a single target class, -H(Y) when the top-1 class
    says nothing about the label.
    """
    z = np.asarray(probs).argmax(axis=1)
    y = _dense_labels(labels)
    _, z = np.unique(z, return_inverse=True)
    joint = np.zeros((y.max() + 1, z.max() + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    conditional = joint / joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log(conditional[nonzero])).sum())


def folds_of(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stratified (train, held-out) index pairs that the cross-fitted scores and advise's probes share."""
    y = _dense_labels(labels)
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def leep_cv(probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Cross-fitted LEEP, one value per held-out fold: P(y | z) from the other folds, the log-likelihood on this one.

    In-sample LEEP scores P(y | z) on the images it was estimated from, so with labels the head knows
    nothing about it still explains part of H(Y) (more the more classes); held out, such labels score
    about -H(Y). P(y | z) is shrunk towards the training folds' class prior (``PRIOR_IMAGES``).
    """
    p, y = np.asarray(probs, dtype=np.float64), _dense_labels(labels)
    return np.array([_held_out_loglik(p[fit], y[fit], p[held], y[held]).mean()
                     for fit, held in folds_of(y, folds, seed)])


def nce_cv(probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Cross-fitted NCE per held-out fold: NCE's P(y | top-1 class z) from the other folds, scored on this one."""
    top1 = np.eye(np.asarray(probs).shape[1])[np.asarray(probs).argmax(axis=1)]
    return leep_cv(top1, labels, folds, seed)


def _held_out_loglik(p_fit: np.ndarray, y_fit: np.ndarray, p_held: np.ndarray, y_held: np.ndarray) -> np.ndarray:
    """log sum_z P(y | z) p(z | x) for each held-out image, P(y | z) from the soft joint counts of the fit rows."""
    classes = max(y_fit.max(), y_held.max()) + 1
    counts = np.zeros((classes, p_fit.shape[1]))
    np.add.at(counts, y_fit, p_fit)  # soft joint, in images
    prior = np.bincount(y_fit, minlength=classes) / len(y_fit)
    conditional = (counts + PRIOR_IMAGES * prior[:, None]) / (counts.sum(axis=0, keepdims=True) + PRIOR_IMAGES)
    return np.log(np.clip((p_held * conditional[y_held]).sum(axis=1), _TINY, None))


def explained_fraction(score: float, h_y: float) -> float:
    """Turn LEEP or NCE (between -H(Y) and 0) into the share of the label entropy the head explains, in [0, 1]."""
    if h_y <= 0:
        raise ValueError("the labels hold a single class: transferability needs at least two")
    return float(np.clip(1.0 + score / h_y, 0.0, 1.0))


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    return y.reshape(-1)
