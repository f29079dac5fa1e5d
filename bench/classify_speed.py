#!/usr/bin/env python
"""Classify-stage speed: ten classifier configurations on one cached codes file, against one run of
the PyTorch tutorial's "ConvNet as fixed feature extractor" training on the same images.

* codes: one ``extract.extract_codes`` run (timed and reported) over the image set.
* cnncodes: ``classify.train.classify_codes`` ten times on that file (different classifiers,
  normalizations, class weights, sampling, a fixed C), each with its full cross-validation,
  report and model files -- the total wall time is what is compared.
* tutorial: MobileNetV2 with frozen ImageNet weights and a new final ``Linear(1280, 2)``; SGD
  lr=0.001, momentum 0.9, StepLR(7, 0.1); train transform RandomResizedCrop(224) +
  RandomHorizontalFlip, val transform Resize(256)+CenterCrop(224); ``DataLoader(batch_size=4,
  shuffle=True, num_workers=4)``; the backbone forward is recomputed on every image of every epoch.
  The tutorial trains 25 epochs; ``--epochs`` runs fewer, and the report then gives the measured
  mean epoch time x 25 as an estimate, clearly labeled, next to the measured time.
* scale: a synthetic 100,000 x 1,280 codes file (10 classes), one ``classify_codes`` run (svm,
  default normalization, cross-validated C): wall time and peak RSS of that process.

Every run is a fresh child process. The image set is ../shared/datasets/hymenoptera when present,
else generated 500x375 JPEGs. No absolute-time assertions.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
TUTORIAL_EPOCHS = 25

# (label, classify_codes keyword arguments)
CONFIGS = [
    ("svm power (default)", dict(classifier="svm")),
    ("svm l2", dict(classifier="svm", normalize="l2")),
    ("svm standard", dict(classifier="svm", normalize="standard")),
    ("svm no class weight", dict(classifier="svm", class_weight=None)),
    ("svm C=10 fixed", dict(classifier="svm", C=10.0)),
    ("svm oversampling", dict(classifier="svm", sampling="over")),
    ("softmax power", dict(classifier="softmax")),
    ("softmax l2", dict(classifier="softmax", normalize="l2")),
    ("softmax undersampling", dict(classifier="softmax", sampling="under")),
    ("softmax standard", dict(classifier="softmax", normalize="standard")),
]


# ============================================================================ children
def child_extract(root: Path, out: Path) -> dict:
    from cnncodes.extract import extract_codes

    t0 = time.perf_counter()
    result = extract_codes(root, out, overwrite=True, progress=False)
    return {"seconds": time.perf_counter() - t0, "images": result.n_images}


def child_classify(codes: Path, out_dir: Path, which: str) -> dict:
    from cnncodes.classify.train import classify_codes

    configs = CONFIGS if which == "all" else [CONFIGS[int(which)]]
    rows, t0 = [], time.perf_counter()
    for i, (label, kwargs) in enumerate(configs):
        t = time.perf_counter()
        rep = classify_codes(codes, out_dir / f"run{i}", progress=False, **kwargs)
        acc = rep.get("accuracy", rep.get("balanced_accuracy"))
        rows.append({"label": label, "seconds": time.perf_counter() - t, "accuracy": acc,
                     "hyperparameter": rep.get("hyperparameter")})
    return {"seconds": time.perf_counter() - t0, "runs": rows, "peak_rss_mib": common.peak_rss_mib()}


def child_tutorial(root: Path, epochs: int) -> dict:
    import torch
    from torch import nn, optim
    from torch.optim import lr_scheduler
    from torchvision import datasets, models, transforms

    from cnncodes.extract.weights import embedded_checkpoint

    t_start = time.perf_counter()
    data_transforms = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(),
                                     transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
    }
    image_datasets = {x: datasets.ImageFolder(os.path.join(root, x), data_transforms[x]) for x in ("train", "val")}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=True, num_workers=4)
                   for x in ("train", "val")}
    sizes = {x: len(image_datasets[x]) for x in ("train", "val")}
    model_conv = models.mobilenet_v2()
    model_conv.load_state_dict(torch.load(embedded_checkpoint("mobilenet_v2"), weights_only=True))
    for param in model_conv.parameters():
        param.requires_grad = False
    model_conv.classifier[1] = nn.Linear(model_conv.classifier[1].in_features, len(image_datasets["train"].classes))
    criterion = nn.CrossEntropyLoss()
    optimizer_conv = optim.SGD(model_conv.classifier[1].parameters(), lr=0.001, momentum=0.9)
    exp_lr_scheduler = lr_scheduler.StepLR(optimizer_conv, step_size=7, gamma=0.1)
    epoch_times, best_acc = [], 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for phase in ("train", "val"):
            model_conv.train() if phase == "train" else model_conv.eval()
            corrects = 0
            for inputs, labels in dataloaders[phase]:
                optimizer_conv.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model_conv(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer_conv.step()
                corrects += int(torch.sum(preds == labels.data))
            if phase == "train":
                exp_lr_scheduler.step()
            else:
                best_acc = max(best_acc, corrects / sizes["val"])
        epoch_times.append(time.perf_counter() - t0)
    return {"seconds": time.perf_counter() - t_start, "epoch_seconds": epoch_times, "epochs": epochs,
            "best_val_acc": best_acc, "images": sizes}


def child_synthetic(out: Path, rows: int, dim: int, classes: int) -> dict:
    """Write a synthetic codes file: non-negative, sparse-ish, class-dependent codes (float32)."""
    import h5py
    import numpy as np

    from cnncodes.extract.codesfile import Rows, create_codes_dataset, write_attrs, write_rows

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, rows)
    centers = rng.gamma(0.6, 1.0, (classes, dim)).astype(np.float32)
    split = np.where(rng.random(rows) < 0.8, "train", "test").astype(object)
    rec = {"backbone": "mobilenet_v2", "weights_sha256": "synthetic",
           "taps": [{"name": "penultimate", "node": "features.18.2", "pool": "avg", "dim": dim}],
           "preprocess": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                          "interpolation": "bilinear"}}
    meta = {"recipe": rec, "backbone": "mobilenet_v2", "weights": {"name": "synthetic", "sha256": "synthetic"},
            "taps": rec["taps"], "preprocess": rec["preprocess"], "class_names": [f"class{k}" for k in range(classes)],
            "image_root": "/synthetic", "versions": {}, "precision": "fp32", "dtype": "float32", "complete": False}
    with h5py.File(out, "w") as h5:
        write_attrs(h5, meta)
        write_rows(h5, Rows(labels=labels, paths=np.array([f"img/{i:06d}.jpg" for i in range(rows)], dtype=object),
                            split=split, ok=np.ones(rows, bool), errors=np.array([""] * rows, dtype=object),
                            file_size=np.full(rows, 1000, np.int64), file_mtime_ns=np.zeros(rows, np.int64)))
        ds = create_codes_dataset(h5, "penultimate", rows, dim, "float32")
        for s in range(0, rows, 10000):
            y = labels[s:s + 10000]
            x = centers[y] + rng.gamma(0.6, 1.2, (len(y), dim)).astype(np.float32)
            ds[s:s + len(y)] = np.maximum(x - 0.6, 0)
        h5.attrs["complete"] = True
    return {"rows": rows, "bytes": out.stat().st_size}


# ============================================================================ parent
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (generated images, 1 epoch, 10k rows)")
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"tutorial epochs actually run (default 3, quick 1; the tutorial's recipe is {TUTORIAL_EPOCHS})")
    ap.add_argument("--rows", type=int, default=None, help="rows of the synthetic codes file (default 100,000)")
    ap.add_argument("--skip-scale", action="store_true", help="skip the synthetic large-file run")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return common.serve_child(args.child, {
            "extract": lambda root, save: child_extract(Path(root), Path(save)),
            "classify": lambda codes, out, config: child_classify(Path(codes), Path(out), config),
            "tutorial": lambda root, epochs: child_tutorial(Path(root), int(epochs)),
            "synthetic": lambda path, rows: child_synthetic(Path(path), int(rows), 1280, 10)})

    if args.quick:
        os.environ.setdefault("CNNCODES_BENCH_SYNTHETIC", "1")
    epochs = args.epochs or (1 if args.quick else 3)
    rows = args.rows or (10_000 if args.quick else 100_000)
    root, desc = common.standard_images(args.quick)
    print(f"classify speed; {common.load_average()}\nimages: {desc}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-bench-") as tmp:
        tmp = Path(tmp)
        codes = tmp / "codes.h5"
        ext = common.run_child(SCRIPT, ["extract", str(root), str(codes)])
        print(f"  extract (once): {ext['images']} images in {ext['seconds']:.1f} s")
        # alternate: tutorial first, then the ten configurations (one round; both are long)
        tut = common.run_child(SCRIPT, ["tutorial", str(root), str(epochs)], timeout=24 * 3600)
        mean_epoch = sum(tut["epoch_seconds"]) / len(tut["epoch_seconds"])
        print(f"  tutorial fixed-feature-extractor training: {epochs} epoch(s) in {tut['seconds']:.1f} s "
              f"(epochs: {' '.join(f'{s:.1f}' for s in tut['epoch_seconds'])} s; best val acc {tut['best_val_acc']:.3f})")
        cls = common.run_child(SCRIPT, ["classify", str(codes), str(tmp / "runs"), "all"])
        for r in cls["runs"]:
            acc = f"{r['accuracy']:.3f}" if isinstance(r["accuracy"], (int, float)) else str(r["accuracy"])
            print(f"    {r['label']:24s} {r['seconds']:6.2f} s  accuracy {acc}  {r['hyperparameter']}")
        print(f"\n== ten classifier configurations on one codes file: {cls['seconds']:.1f} s in total")
        full = mean_epoch * TUTORIAL_EPOCHS
        what = "measured" if epochs == TUTORIAL_EPOCHS else f"estimated: mean epoch {mean_epoch:.1f} s x {TUTORIAL_EPOCHS}"
        print(f"   one tutorial training ({TUTORIAL_EPOCHS} epochs, {what}): {full:.1f} s")
        print(f"   ratio tutorial run / ten configurations: {full / cls['seconds']:.1f}x "
              f"(with the one-off extraction added to ours: {full / (cls['seconds'] + ext['seconds']):.1f}x)")
        print(f"   measured only: {epochs} tutorial epoch(s) {tut['seconds']:.1f} s vs ten configurations "
              f"{cls['seconds']:.1f} s ({tut['seconds'] / cls['seconds']:.1f}x)")
        if not args.skip_scale:
            big = tmp / "synthetic.h5"
            syn = common.run_child(SCRIPT, ["synthetic", str(big), str(rows)])
            res = common.run_child(SCRIPT, ["classify", str(big), str(tmp / "big"), "0"], timeout=24 * 3600)
            print(f"\n== synthetic {rows:,} x 1,280 codes file ({syn['bytes'] / 2**20:,.0f} MiB), one svm run "
                  f"(cross-validated C): {res['seconds']:.1f} s wall, peak RSS {res['peak_rss_mib']:,.0f} MiB, "
                  f"accuracy {res['runs'][0]['accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
