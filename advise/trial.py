"""`advise --try`: score the two or three most plausible options quickly, on training data only.

The linear probes come from the evidence's own codes (cross-validation on the sample); the fine-tune
is short (``TRY_EPOCHS`` epochs) on the evidence's sample of training images, listed in a manifest so
that it reads nothing else: it trains on most of the sample and is scored on the rest
(``TRY_SCORE_FRACTION``, stratified). The val/ and test/ splits are never read.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cnncodes.extract.reader import ImageList

from .evidence import TOP_LAYER, Similarity, stratified_sample, write_manifest
from .scenario import FREEZE_LARGE_DIFFERENT, FREEZE_LARGE_SIMILAR, FREEZE_SMALL_DIFFERENT

TRY_EPOCHS = 3
TRY_WARMUP_EPOCHS = 0.5  # finetune's 1-epoch warm-up would leave a 3-epoch trial one epoch at full learning rate
TRY_SCORE_FRACTION = 0.2  # of the sampled training images, held out of the trial to score it
# The fine-tune worth trying next to the codes: the mildest one (upper 30% trained) where the data is
# like ImageNet, the scenario's own freeze otherwise.
TRY_FREEZE = {1: FREEZE_LARGE_SIMILAR, 2: FREEZE_LARGE_SIMILAR, 3: FREEZE_SMALL_DIFFERENT, 4: FREEZE_LARGE_DIFFERENT}


def probe_rows(similarity: Similarity) -> list[dict]:
    """The top layer and the best earlier layer, as scored by the evidence's cross-validated probes."""
    how = f"{similarity.probe_folds}-fold CV balanced accuracy, {similarity.n_sampled} sampled training images"
    layers = [TOP_LAYER] + ([similarity.best_early_layer] if len(similarity.probe) > 1 else [])
    return [{"option": f"codes {layer} + softmax", "score": similarity.probe[layer], "how": how, "seconds": None}
            for layer in layers]


def trial_folder(out_dir: str | Path, scenario: int) -> Path:
    """Where ``--try --out DIR`` keeps the scenario's trial fine-tune."""
    return Path(out_dir) / f"try-finetune-{TRY_FREEZE[scenario]:g}"


def drop_other_trials(out_dir: str | Path, scenario: int | None) -> None:
    """Remove trial fine-tunes of an earlier advice in ``out_dir`` (replaced with --overwrite), keeping
    this advice's own (``scenario``; None: it ran none), so none is read as this advice's."""
    keep = trial_folder(out_dir, scenario) if scenario is not None else None
    for old in Path(out_dir).glob("try-finetune-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old)


def finetune_row(listing: ImageList, rows: np.ndarray, scenario: int, *, out_dir: str | Path | None,
                 max_images: int, seed: int, log, **finetune_options) -> dict:
    """A short fine-tune with the scenario's freeze on a stratified sample of the training ``rows``;
    its last epoch's balanced accuracy on the sample's share held out of the trial."""
    from cnncodes.finetune import FinetuneInterrupted, finetune_images

    freeze = TRY_FREEZE[scenario]
    picked = rows[stratified_sample(listing.labels[rows], max_images, seed)]
    log(f"--try: fine-tuning {TRY_EPOCHS} epochs with --freeze {freeze:g} on {len(picked)} sampled training images "
        f"({TRY_SCORE_FRACTION:.0%} held out to score it)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnncodes-advise-try-") as sample_dir, \
            tempfile.TemporaryDirectory(prefix="cnncodes-advise-try-run-") as tmp:
        manifest = Path(sample_dir) / "training-sample.csv"  # the trial's only images: no val/ or test/ one
        write_manifest(manifest, listing, picked)
        target = trial_folder(out_dir, scenario) if out_dir is not None else Path(tmp)
        try:
            report = finetune_images(manifest, target, freeze=freeze, epochs=TRY_EPOCHS, warmup_epochs=TRY_WARMUP_EPOCHS,
                                     val_fraction=0, test_fraction=TRY_SCORE_FRACTION, seed=seed, overwrite=True,
                                     **finetune_options)
        except FinetuneInterrupted:
            raise KeyboardInterrupt from None
    return {"option": f"finetune --freeze {freeze:g} ({TRY_EPOCHS} epochs)", "score": report["balanced_accuracy"],
            "how": f"last epoch's balanced accuracy on {report['n_test']} of {len(picked)} sampled training images, "
                   "held out of the trial; a short trial, so a lower bound for finetune's defaults",
            "seconds": round(time.perf_counter() - started, 1)}
