"""Transferability scores of the ImageNet head on target labels: entropy, LEEP and NCE (plain numpy).

``probs`` is an ``[n, Z]`` matrix of the source head's softmax outputs (rows sum to 1), ``labels``
an ``[n]`` int array of target classes. All logarithms are natural (nats).
"""
from __future__ import annotations

import numpy as np

_TINY = 1e-12  # keeps log(0) finite; far below any probability the scores can resolve


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


def explained_fraction(score: float, h_y: float) -> float:
    """Turn LEEP or NCE (between -H(Y) and 0) into the share of the label entropy the head explains, in [0, 1]."""
    if h_y <= 0:
        raise ValueError("the labels hold a single class: transferability needs at least two")
    return float(np.clip(1.0 + score / h_y, 0.0, 1.0))


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    return y.reshape(-1)
