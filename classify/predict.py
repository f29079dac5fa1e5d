"""predict_codes: apply a trained model to a codes file of new images, one CSV row per image."""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path

import numpy as np

from extract.codesfile import check_recipe

from .data import file_meta, layer_recipe, load, resolve_layers
from .fileio import write_files
from .model_io import load_model
from .stream import PREDICT_MEMORY_FACTOR, predict_streamed, should_stream


def predict_codes(run_dir: str | os.PathLike, codes_path: str | os.PathLike, out_csv: str | os.PathLike) -> dict:
    """Write ``path, predicted, score_<class>..., error`` for every row of ``codes_path``.

    The codes file must have been extracted with the model's recipe for the taps the model uses
    (RecipeMismatch names the difference otherwise). Scores are ``decision_function`` values where
    the classifier has one (for two classes: minus / plus the decision value), else probabilities.
    Rows whose image failed (or whose codes are not finite) get an empty prediction and their error.
    """
    bundle = load_model(run_dir)
    layers = bundle["layers"]
    meta, _ = file_meta(codes_path)
    check_recipe(layer_recipe(bundle["recipe"], layers), layer_recipe(meta.get("recipe", {}), layers),
                 f"codes file {codes_path}")
    resolve_layers(codes_path, layers)  # clear error naming the available layers
    if should_stream(codes_path, layers, None, factor=PREDICT_MEMORY_FACTOR):  # over a quarter of RAM
        return predict_streamed(run_dir, codes_path, out_csv)
    cf, X = load(codes_path, layers)

    pipe, names = bundle["pipeline"], bundle["class_names"]
    classes = [names[int(c)] for c in pipe.classes_]
    errors = np.array(cf.rows.errors, dtype=object)
    ok = cf.rows.ok.astype(bool)
    finite = np.isfinite(X).all(axis=1)
    errors[ok & ~finite] = "codes contain NaN or infinite values"
    good = ok & finite
    predicted = np.full(len(X), "", dtype=object)
    scores = np.full((len(X), len(classes)), np.nan)
    if good.any():
        predicted[good] = [names[int(c)] for c in pipe.predict(X[good])]
        scores[good] = _scores(pipe, X[good])

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "predicted", *(f"score_{c}" for c in classes), "error"])
    for i in range(len(X)):
        row_scores = [f"{s:.6g}" for s in scores[i]] if good[i] else [""] * len(classes)
        writer.writerow([cf.rows.paths[i], predicted[i], *row_scores, "" if good[i] else (errors[i] or "image failed")])
    out_csv = Path(out_csv)
    write_files(out_csv.parent if str(out_csv.parent) else ".", {out_csv.name: buf.getvalue()})
    return {"out_csv": str(out_csv), "n_rows": int(len(X)), "n_predicted": int(good.sum()),
            "n_failed": int((~good).sum()), "predicted_counts": dict(Counter(predicted[good].tolist())),
            "score": "decision_function" if hasattr(pipe, "decision_function") else "predict_proba"}


def _scores(pipe, X: np.ndarray) -> np.ndarray:
    """One score per class in ``pipe.classes_`` order."""
    if hasattr(pipe, "decision_function"):
        d = pipe.decision_function(X)
        return np.column_stack([-d, d]) if d.ndim == 1 else d
    return pipe.predict_proba(X)


def extraction_settings(recipe: dict) -> dict:
    """extract_codes keyword arguments that reproduce ``recipe`` (weights are found the usual way)."""
    taps = recipe.get("taps", [])
    spatial = [t["pool"] for t in taps if len(t.get("shape", [])) > 1]
    prep = recipe.get("preprocess", {})
    return {"backbone": recipe["backbone"], "layers": tuple(t["name"] for t in taps),
            "pool": spatial[0] if spatial else "avg", "resize": prep.get("resize"), "crop": prep.get("crop"),
            "weights": "random" if recipe.get("weights_sha256") == "random" else None}


def predict_images(run_dir: str | os.PathLike, images: str | os.PathLike, out_csv: str | os.PathLike, *,
                   codes_out: str | os.PathLike | None = None, weights: str | None = None, **run_options) -> dict:
    """Extract ``images`` (a folder or CSV manifest) with exactly the model's recipe, then predict.

    ``images`` may also be a codes file, used as is. ``codes_out`` keeps the extracted codes
    (default: a temporary file). ``run_options`` (device, precision, batch_size, workers, progress)
    go to extract_codes; a checkpoint other than the model's is refused with the difference named.
    """
    import tempfile

    from extract import extract_codes

    if Path(images).is_file() and Path(images).suffix.lower() in (".h5", ".hdf5"):
        return predict_codes(run_dir, images, out_csv)
    bundle = load_model(run_dir)
    recipe = bundle["layer_recipe"]
    settings = extraction_settings(recipe)
    if weights:
        settings["weights"] = weights
    with tempfile.TemporaryDirectory(prefix="cnncodes-predict-") as tmp:
        codes = Path(codes_out) if codes_out else Path(tmp) / "codes.h5"
        extraction = extract_codes(images, codes, expected_recipe=recipe, **settings, **run_options)
        result = predict_codes(run_dir, codes, out_csv)
    return {**result, "failures": extraction.failures, "codes": str(codes_out or "")}
