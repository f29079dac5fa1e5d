"""advise_images: measure an image set's size and similarity to ImageNet, pick the scenario 1-4 and
recommend the commands for it (and with ``try_options``, score the most plausible ones)."""
from __future__ import annotations

import json
import os
import sys
import time

from cnncodes.classify.fileio import write_files
from cnncodes.extract import ExtractionInterrupted, get_backbone
from cnncodes.extract.errors import UsageError
from cnncodes.extract.outputs import guards_output
from cnncodes.extract.reader import list_images
from cnncodes.extract.weights import locate_weights

from . import evidence, scenario, trial
from .commands import carried_options, finetune_epochs, recommend
from .options import DEFAULT_SAMPLE, MIN_SAMPLE, check_options  # noqa: F401  (MIN_SAMPLE re-exported)
from .report import build_advice, format_advice

__all__ = ["advise_images", "format_advice", "MIN_SAMPLE"]


@guards_output("out_dir", images="images")
def advise_images(images: str | os.PathLike, *, backbone: str = "mobilenet_v2", weights: str | None = None,
                  sample: int = DEFAULT_SAMPLE, seed: int = 0, resize: int | None = None,
                  crop: int | None = None, device: str = "auto", precision: str = "auto",
                  batch_size: int | None = None,
                  workers: int | None = None, try_options: bool = False, out_dir: str | os.PathLike | None = None,
                  progress: bool = True, path_column: str | None = None, label_column: str | None = None,
                  split_column: str | None = None, overwrite: bool = False) -> dict:
    """Advise on ``images`` (folder tree or CSV manifest): returns the advice dict (see report.build_advice).

    One backbone pass over a stratified sample of at most ``sample`` training images. ``try_options``
    also runs a short fine-tune (into ``out_dir``/try-finetune-F when given, else a temporary folder).
    ``*_column`` name a manifest's columns (extract.reader.list_images) and are carried into the commands.
    ``out_dir`` also keeps advice.json and advice.txt; a folder holding files is refused unless ``overwrite``.
    Raises ValueError with a one-line message for unusable input, before any long work.
    """
    started = time.perf_counter()
    log = _logger(progress)
    check_options({"sample": sample})
    bb = get_backbone(backbone)
    columns = dict(path_column=path_column, label_column=label_column, split_column=split_column)
    listing = list_images(images, **columns)
    rows, which = evidence.training_rows(listing)
    size = evidence.measure_size(listing, rows, which)
    if size.n_classes < 2:
        raise UsageError(f"{images}: the training images hold one class ({', '.join(size.per_class)}); "
                         "advice needs at least two")
    evidence.check_per_class(size.per_class, "training images")  # before the pass, not after it
    if sample < evidence.MIN_PER_CLASS_SAMPLED * size.n_classes:
        raise UsageError(f"--sample {sample} is too small for {size.n_classes} classes "
                         f"(at least {evidence.MIN_PER_CLASS_SAMPLED * size.n_classes})")
    locate_weights(bb, weights)  # a missing checkpoint is an error now, not after the listing work
    log(f"{size.n_images} {which} images in {size.n_classes} classes")
    try:
        similarity = evidence.measure_similarity(
            listing, rows, backbone=backbone, weights=weights, sample=sample, seed=seed, log=log, resize=resize,
            crop=crop, device=device, precision=precision, batch_size=batch_size, workers=workers,
            progress=progress)
    except ExtractionInterrupted:
        raise KeyboardInterrupt from None  # the sample's temporary codes are gone: nothing to resume
    has_early = len(similarity.probe) > 1
    parts = similarity.parts()
    number = scenario.scenario_for(size.median_per_class, parts.similarity)
    common = carried_options(backbone, weights, resize, crop, **columns)
    recommendations = recommend(number, str(images), similarity.best_early_layer if has_early else None, common,
                                finetune_epochs(listing))
    trials = None
    if try_options:
        trials = trial.probe_rows(similarity) + [trial.finetune_row(
            listing, rows, number, out_dir=out_dir, max_images=sample, log=log, backbone=backbone, weights=weights,
            seed=seed, device=device, resize=resize, crop=crop, workers=workers, progress=progress)]
    advice = build_advice(images=str(images), backbone=backbone, weights=weights, size=size, similarity=similarity,
                          parts=parts, scenario=number, recommendations=recommendations, trials=trials,
                          seconds=time.perf_counter() - started)
    if out_dir is not None:
        trial.drop_other_trials(out_dir, number if try_options else None)
        write_files(out_dir, {"advice.json": json.dumps(advice, indent=2) + "\n",
                              "advice.txt": format_advice(advice) + "\n"})
    return advice


def _logger(progress: bool):
    def log(message: str) -> None:
        if progress:
            print(f"[advise] {message}", file=sys.stderr, flush=True)
    return log
