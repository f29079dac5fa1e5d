"""Epoch checkpoints, written atomically (temporary name, then rename), and the resume check.

A checkpoint holds everything the next epoch depends on: model, optimizer, scheduler, the sampler's
seed, the RNG states, the best epoch so far (with its weights) and the epoch log. Loading uses
``torch.load(weights_only=True)``: the file holds tensors and plain Python values only.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from cnncodes.classify.fileio import write_files
from cnncodes.extract.errors import UsageError

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _python_state() -> list:
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def save(run_dir: Path, state: dict) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically."""
    write_files(run_dir, {CHECKPOINT: lambda path: torch.save(state, path)})


def exists(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a fine-tuning run's checkpoint (a run that a rerun resumes)."""
    return (Path(run_dir) / CHECKPOINT).is_file()


def load(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{path} cannot be read ({type(err).__name__}: {err}); delete it or pass --overwrite "
                         "to start again") from err


def config_difference(saved: dict, wanted: dict) -> list[str]:
    """The options that differ between a saved run and this command, one readable item each."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: {saved.get(k)!r} before, {wanted.get(k)!r} now" for k in keys if saved.get(k) != wanted.get(k)]
