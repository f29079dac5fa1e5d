"""`advise --try`: score the two or three most plausible options quickly, on training data only.

The linear probes come from the evidence's own codes (cross-validation on the sample); the fine-tune
is short (``TRY_EPOCHS`` epochs on at most the sample's size of training images) and is scored on the
validation share that finetune carves from the training split. The evaluation split is never used.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .evidence import TOP_LAYER, Similarity
from .scenario import FREEZE_LARGE_DIFFERENT, FREEZE_LARGE_SIMILAR, FREEZE_SMALL_DIFFERENT

TRY_EPOCHS = 3
TRY_WARMUP_EPOCHS = 0.5  # finetune's 1-epoch warm-up would leave a 3-epoch trial one epoch at full learning rate
TRY_VAL_FRACTION = 0.2  # a larger validation share than finetune's default: the trial's only score
# The fine-tune worth trying next to the codes: the mildest one (upper 30% trained) where the data is
# like ImageNet, the scenario's own freeze otherwise.
TRY_FREEZE = {1: FREEZE_LARGE_SIMILAR, 2: FREEZE_LARGE_SIMILAR, 3: FREEZE_SMALL_DIFFERENT, 4: FREEZE_LARGE_DIFFERENT}


def probe_rows(similarity: Similarity) -> list[dict]:
    """The top layer and the best earlier layer, as scored by the evidence's cross-validated probes."""
    how = f"{similarity.probe_folds}-fold CV balanced accuracy, {similarity.n_sampled} sampled training images"
    layers = [TOP_LAYER] + ([similarity.best_early_layer] if len(similarity.probe) > 1 else [])
    return [{"option": f"codes {layer} + softmax", "score": similarity.probe[layer], "how": how, "seconds": None}
            for layer in layers]


def finetune_row(images: str, scenario: int, *, out_dir: str | Path | None, max_images: int, log,
                 **finetune_options) -> dict:
    """A short fine-tune with the scenario's freeze; its best validation balanced accuracy."""
    from finetune import FinetuneInterrupted, finetune_images

    freeze = TRY_FREEZE[scenario]
    log(f"--try: fine-tuning {TRY_EPOCHS} epochs with --freeze {freeze:g} on at most {max_images} training images")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnncodes-advise-try-") as tmp:
        target = Path(out_dir) / f"try-finetune-{freeze:g}" if out_dir is not None else Path(tmp)
        try:
            report = finetune_images(images, target, freeze=freeze, epochs=TRY_EPOCHS, warmup_epochs=TRY_WARMUP_EPOCHS,
                                     val_fraction=TRY_VAL_FRACTION, max_train_images=max_images, overwrite=True,
                                     **finetune_options)
        except FinetuneInterrupted:
            raise KeyboardInterrupt from None
    return {"option": f"finetune --freeze {freeze:g} ({TRY_EPOCHS} epochs)", "score": report["val_balanced_accuracy"],
            "how": f"best validation balanced accuracy on {TRY_VAL_FRACTION:.0%} of the training images; a short "
                   f"trial, so a lower bound for finetune's defaults",
            "seconds": round(time.perf_counter() - started, 1)}
