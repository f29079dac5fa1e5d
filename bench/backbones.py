#!/usr/bin/env python
"""Backbones compared: penultimate codes of MobileNetV2 and EfficientNet-Lite0/1/2 (issue 25).

* Quality: for each image set (default: hymenoptera and clothing6 from ../shared/datasets) and backbone,
  ``cnncodes run SET --layer penultimate --backbone B`` with its defaults (the backbone's own
  preprocessing, ``--precision auto``), then the balanced accuracy of svm and softmax on the evaluation
  split (val) from the run's compare.csv.
* Cost: model alone, as bench/extract_speed.py measures it: pre-made uint8 batches at the backbone's own
  crop through cnncodes' computer (``computer.map``, its default streams and batch size), each backbone in
  a fresh child process, in alternating rounds; the median img/s.

Prints markdown tables; nothing asserts a time.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import common

BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SETS = ("hymenoptera", "clothing6")


def child_model(backbone: str, precision: str, n_images: str) -> dict:
    """Model alone: ``n_images`` pre-made images through the extraction's computer, after 4 warm-up batches."""
    from cnncodes import pipeline
    pipeline.process_settings()
    import torch

    from cnncodes.extract import runner
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.recipe import preprocess_config

    torch.manual_seed(0)
    computer, bs, desc = runner.inference_setup(backbone=backbone, precision=precision)
    crop = preprocess_config(get_backbone(backbone))["crop"]
    image = torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8)
    warm, batches = 4, int(n_images) // bs
    stream = ((torch.stack([image] * bs), torch.ones(bs, dtype=torch.bool), [""] * bs) for _ in range(warm + batches))
    for k, _ in enumerate(computer.map(stream)):
        if k == warm - 1:
            t0 = common.now()
    return {"images": batches * bs, "seconds": common.now() - t0, "settings": desc}


def head_check(datasets: Path, backbone: str, variants: bool) -> list[str]:
    """The ImageNet head's top-1 on hymenoptera/val (ants: class 310, bees: 309) with the backbone's own
    preprocessing, and with ``variants`` also ImageNet mean/std and bilinear resizing: checks the converted
    weights and the preprocessing they expect."""
    import torch

    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.images import load_image
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.weights import build_model, locate_weights

    bb = get_backbone(backbone)
    model, own = build_model(bb, locate_weights(bb)), preprocess_config(bb)
    val = sorted((datasets / "hymenoptera" / "val").glob("*/*"))
    files = [(p, 310 if p.parent.name == "ants" else 309) for p in val]
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    tried = [("own", own), ("imagenet mean/std", {**own, **imagenet}),
             ("bilinear", {**own, "interpolation": "bilinear"})]
    lines = []
    for label, prep in tried if variants else tried[:1]:
        images = torch.stack([load_image(f, prep["resize"], prep["crop"], prep["interpolation"]) for f, _ in files])
        mean, std = (torch.tensor(prep[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        with torch.inference_mode():
            top = torch.cat([model((b.float() / 255 - mean) / std).argmax(1) for b in images.split(16)])
        right = int((top == torch.tensor([c for _, c in files])).sum())
        lines.append(f"| {backbone} | {label}: {prep['resize']}/{prep['crop']} {prep['interpolation']}, mean "
                     f"{prep['mean'][0]:.3f} std {prep['std'][0]:.3f} | {right}/{len(files)} |")
    return lines


def run_quality(root: Path, backbone: str, out: Path) -> dict[str, float]:
    """svm and softmax balanced accuracy on val of penultimate codes, from `cnncodes run`."""
    cmd = [sys.executable, str(common.REPO / "pipeline.py"), "run", str(root), "--out", str(out),
           "--backbone", backbone, "--layer", "penultimate", "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=str(common.REPO))
    with open(out / "compare" / "compare.csv", newline="") as fh:
        return {row["classifier"]: float(row["balanced_accuracy"]) for row in csv.DictReader(fh)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--datasets", type=Path, default=common.HYMENOPTERA.parent, help="folder of the image sets")
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="image sets in --datasets")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=400, help="images per model-alone measurement")
    parser.add_argument("--precision", default="auto", help="model-alone precision (default: auto)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--head-check", action="store_true", help="only the ImageNet head's top-1 on hymenoptera/val")
    args = parser.parse_args(argv)
    if args.child:
        return common.serve_child(args.child, {"model": child_model})
    if args.head_check:
        print("| backbone | preprocessing | top-1 ant/bee |\n|---|---|---:|")
        for name in BACKBONES:
            print("\n".join(head_check(args.datasets, name, variants=name != "mobilenet_v2")), flush=True)
        return 0
    print(f"cpu: {common.cpu_line()}; {common.load_average()}")
    rounds = common.Rounds(list(BACKBONES))
    for r in range(args.rounds):
        for name in common.order_for(r, list(BACKBONES)):
            res = common.run_child(Path(__file__), ["model", name, args.precision, str(args.images)])
            rate = rounds.add(name, res["images"], res["seconds"])
            print(f"  round {r}: {name} {rate:.1f} img/s ({res['settings']})", flush=True)
    print(f"\n| model alone, --precision {args.precision} | img/s (median of {args.rounds}) | rounds |\n|---|---:|---|")
    for name in BACKBONES:
        print(f"| {name} | {rounds.median(name):.1f} | {rounds.spread(name)} |")
    print(f"({common.load_average()})")
    if args.skip_quality:
        return 0
    print("\n| set | backbone | svm | softmax |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="cnncodes-backbones-") as tmp:
        for image_set in args.sets:
            root = args.datasets / image_set
            for name in BACKBONES:
                scores = run_quality(root, name, Path(tmp) / f"{image_set}-{name}")
                print(f"| {image_set} | {name} | {scores['svm']:.4f} | {scores['softmax']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
