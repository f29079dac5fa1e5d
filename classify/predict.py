"""predict_codes: apply a trained model to a codes file of new images, one CSV row per image."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from cnncodes.extract.codesfile import check_recipe
from cnncodes.extract.errors import UsageError
from cnncodes.extract.outputs import guards_output

from .data import file_meta, file_taps, layer_recipe, load
from .fileio import write_files
from .model_io import is_codes_file, load_model
from .predictions import csv_text, evaluate_known, predict_rows, threshold_entry, threshold_rule, true_labels
from .stream import PREDICT_MEMORY_FACTOR, predict_streamed, should_stream


@guards_output("out_csv", folder=False, run="run_dir")
def predict_codes(run_dir: str | os.PathLike, codes_path: str | os.PathLike, out_csv: str | os.PathLike, *,
                  threshold: float | None = None, positive: str | None = None, overwrite: bool = False) -> dict:
    """Write ``path, predicted, [true,] score_<class>..., [prob_<class>...,] error`` for every row.

    The codes file must have been extracted with the model's recipe for the taps the model uses
    (RecipeMismatch names the difference otherwise). Scores are ``decision_function`` values where
    the classifier has one (for two classes: minus / plus the decision value), else probabilities;
    ``prob_`` columns come where the model gives probabilities (softmax, knn, forest, calibrated
    svm). For two classes, ``threshold`` predicts ``positive`` (default: the second class) when its
    probability (else its score) is at least the threshold. Rows labelled with classes the model
    knows get a ``true`` column and are scored (accuracy, balanced accuracy). Rows whose image
    failed (or whose codes are not finite) get an empty prediction and their error. An existing
    ``out_csv`` is replaced only with ``overwrite``, and never a file of ``run_dir``.
    """
    bundle = load_model(run_dir)
    rule = threshold_rule(bundle, threshold, positive)
    layers = bundle["layers"]
    _check_layers(codes_path, layers)
    meta, _ = file_meta(codes_path)
    check_recipe(layer_recipe(bundle["recipe"], layers), layer_recipe(meta.get("recipe", {}), layers),
                 f"codes file {codes_path}")
    if should_stream(codes_path, layers, None, factor=PREDICT_MEMORY_FACTOR):  # over a quarter of RAM
        if threshold is not None:
            raise UsageError(f"{codes_path} is streamed (its codes are over a quarter of RAM); --threshold needs "
                             "them in memory: predict on a smaller file")
        return predict_streamed(run_dir, codes_path, out_csv)
    cf, X = load(codes_path, layers)
    pred = predict_rows(bundle, cf, X, rule, threshold)
    true = true_labels(cf)
    known = np.isin(true, pred.classes)
    out_csv = Path(out_csv)
    write_files(out_csv.parent if str(out_csv.parent) else ".",
                {out_csv.name: csv_text(cf.rows.paths, pred, true if known.any() else None)})
    good = pred.good
    return {"out_csv": str(out_csv), "n_rows": int(len(X)), "n_predicted": int(good.sum()),
            "n_failed": int((~good).sum()), "predicted_counts": dict(Counter(pred.predicted[good].tolist())),
            "score": "decision_function" if hasattr(bundle["pipeline"], "decision_function") else "predict_proba",
            "probabilities": pred.probs is not None,
            "threshold": threshold_entry(rule, threshold),
            "evaluation": evaluate_known(true, pred.predicted, good, known)}


_predict_codes = predict_codes.__wrapped__  # unguarded, for predict_images, which holds the guard already


def _check_layers(codes_path, layers: list[str]) -> None:
    """The codes file must hold every layer the model was trained on; say which it has otherwise."""
    available = file_taps(codes_path)
    missing = [t for t in layers if t not in available]
    if missing:
        raise UsageError(f"the codes file {codes_path} has no {', '.join(missing)}; it has "
                         f"{', '.join(available) or 'no codes'} (the model was trained on {'+'.join(layers)}: "
                         "extract that layer, or predict from the images)")


def extraction_settings(recipe: dict) -> dict:
    """extract_codes keyword arguments that reproduce ``recipe`` (weights are found the usual way)."""
    taps = recipe.get("taps", [])
    spatial = [t["pool"] for t in taps if len(t.get("shape", [])) > 1]
    prep = recipe.get("preprocess", {})
    return {"backbone": recipe["backbone"], "layers": tuple(t["name"] for t in taps),
            "pool": spatial[0] if spatial else "avg", "resize": prep.get("resize"), "crop": prep.get("crop"),
            "weights": "random" if recipe.get("weights_sha256") == "random" else None,
            "views": recipe.get("views", 1)}


@guards_output("out_csv", images="images", folder=False, run="run_dir")
def predict_images(run_dir: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike],
                   out_csv: str | os.PathLike, *, codes_out: str | os.PathLike | None = None,
                   weights: str | None = None, threshold: float | None = None, positive: str | None = None,
                   overwrite: bool = False, **run_options) -> dict:
    """Extract ``images`` with exactly the model's recipe, then predict (see predict_codes).

    ``images``: a folder, a CSV manifest, an image file, or a list of image files and folders
    (extract.reader.list_images); a single codes file is used as is. ``codes_out`` keeps the
    extracted codes (default: a temporary file). ``run_options`` (device, precision, batch_size,
    workers, progress, path_column, label_column, split_column) go to extract_codes; a checkpoint
    other than the model's is refused with the difference named.
    """
    import tempfile

    from cnncodes.extract import extract_codes

    sources = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    codes_files = [s for s in sources if is_codes_file(s)]
    if codes_files:
        if len(sources) > 1:
            raise UsageError(f"{codes_files[0]} is a codes file: give it alone, not with other images")
        return _predict_codes(run_dir, sources[0], out_csv, threshold=threshold, positive=positive)
    bundle = load_model(run_dir)
    threshold_rule(bundle, threshold, positive)
    recipe = bundle["layer_recipe"]
    settings = extraction_settings(recipe)
    if weights:
        settings["weights"] = weights
    with tempfile.TemporaryDirectory(prefix="cnncodes-predict-") as tmp:
        codes = Path(codes_out) if codes_out else Path(tmp) / "codes.h5"
        extraction = extract_codes(sources[0] if len(sources) == 1 else sources, codes, expected_recipe=recipe,
                                   **settings, **run_options)
        result = _predict_codes(run_dir, codes, out_csv, threshold=threshold, positive=positive)
    return {**result, "failures": extraction.failures, "codes": str(codes_out or "")}
