"""The advisor's evidence on the real calibration sets: one `advise` pass each (embedded weights), and the
hymenoptera training labels permuted (ImageNet then says nothing about them: similarity should fall to about 0.25).

    python bench/advise_calibration.py [--sample 500] [--datasets DIR] [--digits DIR] [--json OUT.json]

Prints one markdown row per set. The codes and fine-tuning side of the calibration table is measured
with `cnncodes run` / `cnncodes finetune` (bench/RESULTS.md lists the commands).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO

NAMES = ("hymenoptera", "clothing6", "rsscn7_aerial", "sign_digits", "potato_leaf_imbalanced")


def permuted_manifest(root: Path, out: Path, seed: int = 0) -> Path:
    """A manifest of ``root``'s training images with their labels shuffled among them."""
    from cnncodes.extract.reader import list_images

    from cnncodes.advise.evidence import training_rows

    listing = list_images(root)
    rows, _ = training_rows(listing)
    labels = np.random.default_rng(seed).permutation(listing.labels[rows])
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for i, label in zip(rows, labels):
            writer.writerow([str(listing.root / listing.paths[i]), listing.class_names[label]])
    return out


def row(name: str, advice: dict, seconds: float) -> str:
    ev, parts, size = advice["evidence"], advice["evidence"]["parts"], advice["size"]
    low, high = advice["similarity_interval"]
    frac_in = 1 + ev["leep_in_sample"] / ev["label_entropy"]
    return (f"| {name} | {size['n_images']} / {size['n_classes']} / {size['median_per_class']:g} | {ev['n_sampled']} | "
            f"{parts['leep_fraction']:.3f} ({frac_in:.3f}) | {parts['top_layer_preference']:.3f} "
            f"({ev['probe']['penultimate']:.3f} vs {ev['best_early_layer']} {ev['probe'][ev['best_early_layer']]:.3f}) | "
            f"{parts['head_confidence']:.3f} | **{advice['similarity']:.3f}** [{low:.3f}, {high:.3f}] | "
            f"{advice['scenario']} | {ev['seconds_extract']:.1f} / {ev['seconds_probe']:.1f} / {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets",
                        help="the folder holding the real sets (../shared/datasets)")
    parser.add_argument("--digits", type=Path, default=Path("/tmp/digits"),
                        help="where `cnncodes dataset digits` wrote the digits set")
    parser.add_argument("--json", type=Path, help="also save every advice dict here")
    args = parser.parse_args()
    from cnncodes.advise import advise_images

    sets = {name: args.datasets / name for name in NAMES} | {"digits": args.digits}
    print("| set | train images / classes / median per class | sampled | LEEP fraction cross-fitted (in-sample) | "
          "top-layer preference (probes) | head confidence (not counted) | similarity [95% interval] | scenario | "
          "extract / probes / advice s |")
    print("|---|---|---:|---|---|---:|---|---:|---|")
    saved = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets["hymenoptera, labels permuted"] = permuted_manifest(args.datasets / "hymenoptera", Path(tmp) / "permuted.csv")
        for name, path in sets.items():
            started = time.perf_counter()
            advice = advise_images(path, sample=args.sample, progress=False)
            print(row(name, advice, time.perf_counter() - started), flush=True)
            saved[name] = advice
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
