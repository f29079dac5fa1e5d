"""auto's one selection protocol: the share of the training split every candidate is scored on, the noise
of that score, the winner, and the leaderboard log a rerun resumes from (numpy and files only).

Every candidate, codes classifier or fine-tune, fits on the same rows of the training split and is scored
by balanced accuracy on the same stratified share of it (SELECTION_SHARE, seeded), so the scores compare;
the evaluation split is not among them. The winner is the cheapest candidate whose score is within one
standard error of the best one's (the one-standard-error rule): a costlier candidate must beat the noise.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from cnncodes.extract.errors import UsageError

SELECTION_SHARE = 0.2  # of the training split, held out of every candidate's fit to score it
MIN_TRAIN_PER_CLASS = 3  # one image in the share, two to fit (classify's folds need two of a class)


def selection_share(labels: np.ndarray, seed: int, share: float = SELECTION_SHARE) -> np.ndarray:
    """Mask over the training ``labels``: True for the stratified, seeded share that scores the candidates
    (at least one image of every class)."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < MIN_TRAIN_PER_CLASS:
        few = ", ".join(f"{c} ({n})" for c, n in zip(classes, counts) if n < MIN_TRAIN_PER_CLASS)
        raise UsageError(f"auto needs at least {MIN_TRAIN_PER_CLASS} training images of each of at least two "
                         f"classes (one scores the candidates, two fit them); too few: {few or 'a single class'}")
    n_take = max(math.ceil(share * len(labels)), len(classes))
    _, taken = train_test_split(np.arange(len(labels)), test_size=n_take, random_state=seed, stratify=labels)
    mask = np.zeros(len(labels), bool)
    mask[taken] = True
    return mask


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


def pick_winner(rows: list[dict]) -> dict | None:
    """The cheapest (lowest ``cost``) scored row within one standard error (``se``) of the best ``score``."""
    scored = [r for r in rows if r.get("score") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r["score"], [-c for c in r["cost"]]))
    bar = best["score"] - (best["se"] if math.isfinite(best["se"]) else 0.0)
    return min((r for r in scored if r["score"] >= bar), key=lambda r: r["cost"])


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
