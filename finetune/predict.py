"""Label new images with a fine-tuned network: ``path, predicted, [true,] prob_<class>..., error``."""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cnncodes.classify.fileio import write_files
from cnncodes.classify.model_io import is_codes_file, is_finetuned_run  # noqa: F401  (is_finetuned_run: re-exported)
from cnncodes.classify.predictions import apply_threshold, binary_rule, evaluate_known, threshold_entry
from cnncodes.extract.backbones import get_backbone
from cnncodes.extract.device import mixed_precision, pick_device
from cnncodes.extract.errors import UsageError
from cnncodes.extract.outputs import guards_output
from cnncodes.extract.reader import list_images

from .data import decode, default_workers
from .model import place
from .train import MODEL_FILE
from .trainer import forward_probs


def load_network(run_dir: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The fine-tuned network in eval mode and its bundle (class names, preprocessing, recipe)."""
    path = Path(run_dir)
    path = path / MODEL_FILE if path.is_dir() else path
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{path} is not a readable fine-tuned network ({type(err).__name__}: {err})") from err
    model = get_backbone(bundle["backbone"]).build()
    parent, _, leaf = bundle["head"].rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, leaf, nn.Linear(getattr(owner, leaf).in_features, bundle["n_classes"]))
    model.load_state_dict(bundle["state_dict"])
    return model.eval(), bundle


@guards_output("out_csv", images="images", folder=False, run="run_dir")
def predict_images(run_dir: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike],
                   out_csv: str | os.PathLike, *, threshold: float | None = None, positive: str | None = None,
                   device: str = "auto", precision: str = "auto", batch_size: int | None = None,
                   workers: int | None = None, progress: bool = True, codes_out: str | None = None,
                   weights: str | None = None, path_column: str | None = None, label_column: str | None = None,
                   split_column: str | None = None, overwrite: bool = False) -> dict:
    """Preprocess ``images`` (folder tree, CSV manifest, image files) as the run did for evaluation, and predict.

    Two classes: ``threshold`` predicts ``positive`` (default: the second class) when its probability
    is at least the threshold (classify.predictions.binary_rule). Unreadable images get an empty
    prediction and their error. Labeled images whose class the model knows get a ``true`` column and
    are scored (accuracy, balanced accuracy). The network has no codes step: a codes file, or
    ``codes_out`` / ``weights``, is refused before any work. An existing ``out_csv`` is replaced only
    with ``overwrite``, and never a file of ``run_dir``.
    """
    _refuse_codes(run_dir, images, codes_out=codes_out, weights=weights)
    listing = list_images(images, path_column=path_column, label_column=label_column, split_column=split_column)
    model, bundle = load_network(run_dir)
    rule = binary_rule(bundle["class_names"], True, threshold, positive)
    dev = pick_device(device)
    amp, _ = mixed_precision(dev, precision)
    place(model, dev)
    prep, names = bundle["preprocess"], bundle["class_names"]
    rows = np.arange(len(listing))
    decoded, failures = decode(listing, rows, prep["resize"], prep["crop"], prep["interpolation"],
                               default_workers() if workers is None else workers, progress, "images")
    good = np.array([im is not None for im in decoded], dtype=bool)
    probs = np.full((len(rows), len(names)), np.nan)
    if good.any():
        probs[good] = forward_probs(model, [im for im in decoded if im is not None], prep["crop"], prep["mean"],
                                    prep["std"], dev, amp, batch_size or 32)
    predicted = np.array([names[int(np.argmax(p))] if ok else "" for p, ok in zip(probs, good)], dtype=object)
    if rule is not None:
        apply_threshold(predicted, probs[:, names.index(rule[0])], good, rule, threshold)
    true = np.array([listing.class_names[int(v)] if v >= 0 else "" for v in listing.labels], dtype=object)
    known = np.isin(true, names)
    errors = dict(failures)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    with_true = bool(known.any())
    writer.writerow(["path", "predicted", *(["true"] if with_true else []), *(f"prob_{c}" for c in names), "error"])
    for i, path in enumerate(listing.paths):
        values = [f"{v:.6g}" for v in probs[i]] if good[i] else [""] * len(names)
        writer.writerow([path, predicted[i], *([true[i]] if with_true else []), *values,
                         "" if good[i] else errors.get(path, "image failed")])
    out_csv = Path(out_csv)
    write_files(out_csv.parent if str(out_csv.parent) else ".", {out_csv.name: buf.getvalue()})
    evaluation = evaluate_known(true, predicted, good, known)
    return {"out_csv": str(out_csv), "n_rows": int(len(rows)), "n_predicted": int(good.sum()),
            "n_failed": int((~good).sum()), "predicted_counts": dict(Counter(predicted[good].tolist())),
            "score": "softmax", "probabilities": True, "threshold": threshold_entry(rule, threshold),
            "failures": failures, "evaluation": evaluation}


def _refuse_codes(run_dir, images, **codes_options) -> None:
    """A fine-tuned network predicts from images: a codes file or a codes-step option is a usage error."""
    given = [f"--{name.replace('_', '-')}" for name, value in codes_options.items() if value is not None]
    if given:
        raise UsageError(f"{' and '.join(given)} applies to codes models (cnncodes classify); {run_dir} is a "
                         "fine-tuned network, which predicts from the images directly")
    sources = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    codes = [s for s in sources if is_codes_file(s)]
    if codes:
        raise UsageError(f"{codes[0]} is a codes file, but {run_dir} is a fine-tuned network, which predicts "
                         "from images (it has no codes step): give the image folder, manifest or files instead")
