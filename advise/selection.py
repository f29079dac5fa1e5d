"""auto's one selection protocol: the folds of the training split every candidate is scored on, the noise
of that score, the winner, and the leaderboard log a rerun resumes from (numpy and files only).

Every candidate, codes classifier or fine-tune, is cross-fitted on the same seeded, stratified folds of the
training split (selection_folds): fitted once per fold on the other folds, it predicts the held-out fold, and
its out-of-fold predictions of every training image give its balanced accuracy, so the scores compare and the
evaluation split is not among them. The winner is the best candidate of the cheapest kind within noise of the
best: the best's lead over it is at most one standard error of the paired difference on the same images
(pick_winner).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from cnncodes.extract.errors import UsageError

FOLDS = 3  # cross-fitting folds: every candidate (a fine-tune too) is fitted this many times
SHARE = 0.2  # the single scored share of a training split too large to cross-fit
CROSS_FIT_UP_TO = 10_000  # training images; beyond, a 0.2 share holds 2,000+ images (an SE near one point)
MIN_TRAIN_PER_CLASS = 3  # one image in each fold, two to fit (classify's folds need two of a class)


def selection_folds(labels: np.ndarray, seed: int) -> np.ndarray:
    """Each training image's selection fold (stratified, seeded): 0..FOLDS-1, every image held out once; for a
    training split over CROSS_FIT_UP_TO images a single SHARE scores (fold 0) and the rest only fit (-1)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < MIN_TRAIN_PER_CLASS:
        few = ", ".join(f"{c} ({n})" for c, n in zip(classes, counts) if n < MIN_TRAIN_PER_CLASS)
        raise UsageError(f"auto needs at least {MIN_TRAIN_PER_CLASS} training images of each of at least two "
                         f"classes (one scores the candidates, two fit them); too few: {few or 'a single class'}")
    folds = np.full(len(labels), -1)
    if len(labels) > CROSS_FIT_UP_TO:
        _, taken = train_test_split(np.arange(len(labels)), test_size=SHARE, random_state=seed, stratify=labels)
        folds[taken] = 0
        return folds
    for k, (_, held) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(labels, labels)):
        folds[held] = k
    return folds


def out_of_fold(y: np.ndarray, predicted: np.ndarray) -> dict:
    """A candidate's selection score from its out-of-fold predictions of the scored images (class indices, -1
    for an image it could not read): balanced accuracy, its noise, and each image's correctness ("0"/"1", for
    the paired comparison)."""
    correct = predicted == y
    per_class = {int(c): {"recall": float(correct[y == c].mean()), "support": int((y == c).sum())}
                 for c in np.unique(y)}
    return {"score": float(np.mean([r["recall"] for r in per_class.values()])), "se": noise(per_class),
            "correct": "".join("1" if c else "0" for c in correct)}


def noise(per_class: dict[str, dict]) -> float:
    """Binomial standard error of a balanced accuracy from its per-class recalls and supports (classify's
    report ``per_class``): sqrt(sum_c r(1 - r) / n_c) / K, with each recall Laplace-smoothed
    ((hits + 1) / (n + 2)) so that a perfect score on a few images still counts as uncertain."""
    present = [row for row in per_class.values() if row["support"] > 0]
    if not present:
        return float("nan")
    variance = 0.0
    for row in present:
        n = row["support"]
        r = (row["recall"] * n + 1) / (n + 2)
        variance += r * (1 - r) / n
    return math.sqrt(variance) / len(present)


def paired_se(a: str, b: str, y: np.ndarray) -> float:
    """Standard error of the difference of two balanced accuracies measured on the same images (``a``, ``b``:
    each image's correctness, "0"/"1"): sqrt(sum_c var_c(a - b) / n_c) / K."""
    d = np.frombuffer(a.encode(), np.uint8).astype(float) - np.frombuffer(b.encode(), np.uint8)
    variance = sum(d[y == c].var(ddof=1) / (y == c).sum() for c in np.unique(y) if (y == c).sum() > 1)
    return math.sqrt(variance) / len(np.unique(y))


def pick_winner(rows: list[dict], y: np.ndarray | None = None) -> dict | None:
    """The best scored row of the cheapest kind (``cost[0]``: codes, then fine-tunes) within noise of the best
    ``score``: that kind's best trails it by at most one standard error of the paired difference (rows with
    ``correct`` on the scored images' labels ``y``), else of the best's own ``se``.

    Noise buys a cheaper kind only: a codes classifier costs one backbone pass and a linear fit, a fine-tune
    tens of passes, while within a kind costs differ by under 2x and the one-SE rule would only give away
    accuracy (clothing6's freeze 0.7 against 0.33: bench/RESULTS.md, auto on the six sets)."""
    scored = [r for r in rows if r.get("score") is not None]
    if not scored:
        return None

    def best_of(group: list[dict]) -> dict:
        return max(group, key=lambda r: (r["score"], [-c for c in r["cost"]]))

    best = best_of(scored)

    def noise_against(r: dict) -> float:
        if y is not None and r.get("correct") and best.get("correct") and len(r["correct"]) == len(y):
            return paired_se(best["correct"], r["correct"], y)
        return best["se"] if math.isfinite(best["se"]) else 0.0

    for kind in sorted({r["cost"][0] for r in scored}):
        leader = best_of([r for r in scored if r["cost"][0] == kind])
        if best["score"] - leader["score"] <= noise_against(leader) + 1e-12:
            return leader
    return best


def read_log(path: Path) -> dict[str, dict]:
    """The finished candidates' rows of a leaderboard log by name; a last line cut short by a kill is ignored."""
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["candidate"]] = row
    return rows


def append_log(path: Path, row: dict) -> None:
    """Append one row as one line with one write (O_APPEND), flushed to disk before returning."""
    data = (json.dumps(row) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            data = b"\n" + data  # a line cut short by a kill stays a line of its own
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
