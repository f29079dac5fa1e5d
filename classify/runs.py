"""Run folders of either kind, told apart by their files: a codes model (``cnncodes classify``:
model.joblib) or a fine-tuned network (``cnncodes finetune``: finetuned.pt); an ``auto`` run folder
(auto.json) stands for its refit winner (winner/), whichever kind that is.

``load_run_model`` and ``predict_run`` choose here, for the command line and the Python API alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from cnncodes.extract.names import AUTO_RESULT, AUTO_WINNER

from .model_io import is_finetuned_run, load_model


def winner_of(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` itself, or for a `cnncodes auto` run folder the winner's run folder inside it."""
    path = Path(run_dir)
    return path / AUTO_WINNER if (path / AUTO_RESULT).is_file() and (path / AUTO_WINNER).is_dir() else path


def load_run_model(run_dir: str | os.PathLike) -> dict:
    """The model of a run folder of either kind, with ``kind`` ("codes" or "finetuned") and ``class_names``.

    A codes model is classify's bundle (``pipeline``: the fitted scikit-learn pipeline, checksum
    verified); a fine-tuned run is finetune's bundle with ``network``, the torch module in eval mode.
    """
    run_dir = winner_of(run_dir)
    if is_finetuned_run(run_dir):
        from cnncodes.finetune.predict import load_network

        network, bundle = load_network(run_dir)
        return {**bundle, "kind": "finetuned", "network": network}
    return {**load_model(run_dir), "kind": "codes"}


def predict_run(run_dir: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike],
                out_csv: str | os.PathLike, **options) -> dict:
    """Predict ``images`` with the run's recipe, whichever kind of run ``run_dir`` is (see the two predict_images)."""
    run_dir = winner_of(run_dir)
    if is_finetuned_run(run_dir):
        from cnncodes.finetune.predict import predict_images
    else:
        from .predict import predict_images
    return predict_images(run_dir, images, out_csv, **options)
