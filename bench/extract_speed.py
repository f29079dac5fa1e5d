#!/usr/bin/env python
"""Extraction speed: the PyTorch transfer-learning tutorial loop against ``cnncodes extract``.

Both sides compute MobileNetV2 penultimate codes (ReLU'd, average-pooled, 1280-D) of the same
images with the same embedded ImageNet weights:

* tutorial: ``datasets.ImageFolder`` per split with ``Resize(256), CenterCrop(224), ToTensor(),
  Normalize(...)``, ``DataLoader(batch_size=4, num_workers=4)``, ``model.classifier = Identity()``
  and a plain fp32 forward under ``torch.no_grad()`` -- as in the tutorial, only ``shuffle=False``
  so that codes can be matched by path (shuffling does not change the speed).
* cnncodes: ``extract.extract_codes(root, out.h5)`` with its defaults, the HDF5 file included,
  twice: with its trace cache filled by an untimed run first (what every run after the first
  one gets) and with the cache off (a first run, or ``CNNCODES_CACHE_DIR=off``).

Each timed run is a fresh child process; the two sides alternate (ABAB, then BABA) for
``--rounds`` rounds and the report gives medians and the median of per-round ratios, because the
machine may be shared. Both are timed from "imports done" to "all codes computed" (model loading
included on both sides). Model-alone throughput (pre-decoded uint8 batches through cnncodes'
inference path and worker streams, with the same settings) is measured in the same rounds.

Image sets: ../shared/datasets/hymenoptera when present (398 files: 397 JPEGs and one real GIF,
train/ants/imageNotFound.gif, which ImageFolder skips -- .gif is not in its IMG_EXTENSIONS -- and
cnncodes reads; so the tutorial does 397 images, cnncodes 398, throughputs are per image, and the
quality checks use the 397 matched by path), else generated 500x375 JPEGs; ``--large`` adds generated
12-megapixel (4000x3000) JPEGs. Quality: mean cosine similarity of the two code sets (matched by
path) and the held-out accuracy of a LinearSVC trained on train/ and tested on val/ with each.
No absolute-time assertions: it prints numbers and ratios, and the targets next to them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
TARGET_RATIO, TARGET_FRACTION, TARGET_LARGE, TARGET_COS, TARGET_ACC = 2.5, 0.60, 8.0, 0.99, 0.5
# the two cnncodes contenders: name -> (trace cache setting of the child, how the report describes it)
CNNCODES_RUNS = {"cnncodes": ("on", "trace cached by an earlier run"), "cnncodes-nocache": ("off", "trace cache off")}


# ============================================================================ children (fresh processes)
def child_tutorial(root: Path, save: Path) -> dict:
    import numpy as np
    import torch
    from torch import nn
    from torchvision import datasets, models, transforms

    from extract.backbones import get_backbone
    from extract.weights import embedded_checkpoint, locate_weights

    ckpt = embedded_checkpoint("mobilenet_v2") or locate_weights(get_backbone("mobilenet_v2")).path
    t0 = common.now()
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.classifier = nn.Identity()  # penultimate: pooled ReLU6 output of features.18
    model.eval()
    data_transforms = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    splits = [s for s in ("train", "val") if (root / s).is_dir()] or [""]
    image_datasets = {x: datasets.ImageFolder(os.path.join(root, x), data_transforms) for x in splits}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=False, num_workers=4)
                   for x in splits}
    outputs = []
    with torch.no_grad():
        for x in splits:
            for inputs, labels in dataloaders[x]:
                outputs.append(model(inputs))
    seconds = common.now() - t0
    paths = [os.path.relpath(p, root).replace(os.sep, "/") for x in splits for p, _ in image_datasets[x].samples]
    np.savez(save, codes=torch.cat(outputs).numpy(), paths=np.array(paths))
    return {"images": len(paths), "seconds": seconds, "threads": torch.get_num_threads()}


def child_cnncodes(root: Path, save: Path, cache: str) -> dict:
    if cache == "off":
        os.environ["CNNCODES_CACHE_DIR"] = "off"
    import h5py
    import numpy as np

    from extract import extract_codes, runner

    out = save.with_suffix(".h5")
    t0 = common.now()
    result = extract_codes(root, out, backbone="mobilenet_v2", layers=("penultimate",), overwrite=True,
                           progress=False)
    seconds = common.now() - t0
    with h5py.File(out, "r") as h5:
        codes = h5["codes/penultimate"][()]
        paths = h5["paths"].asstr()[()]
        attrs = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in h5.attrs.items()
                 if k in ("precision", "device", "dtype")}
    np.savez(save, codes=codes, paths=np.array([str(p) for p in paths], dtype=str))
    out.unlink()
    import torch

    return {"images": int(len(paths)), "seconds": seconds, "failures": len(result.failures),
            "workers": runner.default_workers(torch.device("cpu")), **attrs}


def child_model(which: str, n_images: int) -> dict:
    """Model alone: pre-made uint8 (cnncodes) or normalized float (tutorial) batches, no decoding.

    cnncodes runs its forward pass the way extraction does with its defaults: the same number of
    forked single-threaded streams, each taking whole batches, through ``extract.batches``.
    """
    import extract  # noqa: F401, I001  first, as in child_cnncodes: settings it makes before torch loads apply here too
    import torch

    torch.manual_seed(0)
    if which == "cnncodes":
        from extract import batches, runner

        computer, bs, desc = runner.inference_setup(backbone="mobilenet_v2", layers=("penultimate",))
        streams = runner.default_workers(computer.device)
        premade = PremadeImages(n_images + 2 * bs * streams)
        index = [list(range(i, i + bs)) for i in range(0, len(premade), bs)]
        t0 = None
        for k, _ in enumerate(batches.computed_batches(computer, premade, index, streams)):
            if k == 2 * streams - 1:  # workers started and warm: time from here
                t0, done = common.now(), 0
            elif t0 is not None:
                done += bs
        return {"images": done, "seconds": common.now() - t0, "threads": 1, "settings": desc}
    from torch import nn
    from torchvision import models

    from extract.weights import embedded_checkpoint

    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(embedded_checkpoint("mobilenet_v2"), weights_only=True))
    model.classifier = nn.Identity()
    model.eval()
    bs, desc = 4, "cpu fp32 batch 4 NCHW no_grad (tutorial)"
    batch = torch.randn(bs, 3, 224, 224)
    for _ in range(2):
        with torch.no_grad():
            model(batch)
    done, t0 = 0, common.now()
    while done < n_images:
        with torch.no_grad():
            model(batch)
        done += bs
    return {"images": done, "seconds": common.now() - t0, "settings": desc, "threads": torch.get_num_threads()}


class PremadeImages:
    """Stands in for the image reader: the same random uint8 image for every row, nothing decoded."""

    def __init__(self, n: int, crop: int = 224):
        import torch

        self.n = n
        self.image = torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.image, True, ""


# ============================================================================ parent
def measure(root: Path, rounds: int, tmp: Path, model_images: int, with_model: bool, label: str):
    names = ["tutorial", *CNNCODES_RUNS] + (["model-cnncodes", "model-tutorial"] if with_model else [])
    res = common.Rounds(names)
    info = {}
    os.environ["CNNCODES_CACHE_DIR"] = str(tmp / "traces")  # the children's trace cache, filled here untimed
    common.run_child(SCRIPT, ["cnncodes", str(root), str(tmp / "prime.npz"), "on"])
    for r in range(rounds):
        for name in common.order_for(r, names):
            if name.startswith("model-"):
                out = common.run_child(SCRIPT, ["model", name.split("-", 1)[1], str(model_images)])
            elif name in CNNCODES_RUNS:
                out = common.run_child(SCRIPT, ["cnncodes", str(root), str(tmp / f"{label}-{name}.npz"),
                                                CNNCODES_RUNS[name][0]])
            else:
                out = common.run_child(SCRIPT, [name, str(root), str(tmp / f"{label}-{name}.npz")])
            rate = res.add(name, out["images"], out["seconds"])
            info[name] = out
            print(f"  round {r + 1}/{rounds}  {name:15s} {rate:7.1f} images/s  ({out['images']} images, "
                  f"{out['seconds']:.1f} s; {common.load_average()})", flush=True)
    return res, info


def quality(tmp: Path, label: str, with_svm: bool) -> dict:
    import numpy as np

    a, b = np.load(tmp / f"{label}-tutorial.npz"), np.load(tmp / f"{label}-cnncodes.npz")
    paths, ca, cb = common.match_by_path(list(a["paths"]), a["codes"], list(b["paths"]), b["codes"])
    out = {"matched": len(paths), "tutorial_n": len(a["paths"]), "cnncodes_n": len(b["paths"]),
           "cosine": common.mean_cosine(ca, cb)}
    c = np.load(tmp / f"{label}-cnncodes-nocache.npz")
    out["cache_same_codes"] = bool((c["paths"] == b["paths"]).all() and np.allclose(c["codes"], b["codes"], rtol=1e-4,
                                                                                     atol=1e-5, equal_nan=True))
    if with_svm and any(p.startswith("val/") for p in paths):
        out["svm_tutorial"] = common.svm_accuracy(paths, ca)
        out["svm_cnncodes"] = common.svm_accuracy(paths, cb)
    return out


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def report(title: str, res: common.Rounds, info: dict, q: dict, target_ratio: float, with_model: bool) -> None:
    print(f"\n== {title}")
    print(f"  tutorial loop   {res.median('tutorial'):7.1f} images/s   (rounds: {res.spread('tutorial')}; "
          f"{info['tutorial'].get('threads')} torch threads, 4 workers, batch 4, fp32)")
    extra = ", ".join(f"{k} {info['cnncodes'][k]}" for k in ("device", "precision", "workers") if k in info["cnncodes"])
    for name, (_, how) in CNNCODES_RUNS.items():
        print(f"  {name:16s}{res.median(name):7.1f} images/s   (rounds: {res.spread(name)}; {how}; {extra})")
    for name in CNNCODES_RUNS:
        ratio = res.ratio(name, "tutorial")
        print(f"  ratio {name} / tutorial: {ratio:.2f}x   (target >= {target_ratio}: {verdict(ratio >= target_ratio)})")
    if with_model:
        print(f"  model alone, cnncodes settings: {res.median('model-cnncodes'):7.1f} images/s "
              f"({info['model-cnncodes']['settings']}; rounds: {res.spread('model-cnncodes')})")
        print(f"  model alone, tutorial settings: {res.median('model-tutorial'):7.1f} images/s "
              f"(rounds: {res.spread('model-tutorial')})")
        for name in CNNCODES_RUNS:
            frac = res.ratio(name, "model-cnncodes")
            print(f"  {name} end to end / its model alone: {frac:.0%}   "
                  f"(target >= {TARGET_FRACTION:.0%}: {verdict(frac >= TARGET_FRACTION)})")
    print(f"  images: tutorial {q['tutorial_n']}, cnncodes {q['cnncodes_n']}, matched by path {q['matched']}")
    print(f"  mean cosine similarity of the codes: {q['cosine']:.4f}   "
          f"(target >= {TARGET_COS}: {verdict(q['cosine'] >= TARGET_COS)})")
    print(f"  codes with and without the trace cache agree (rtol 1e-4): {q['cache_same_codes']}")
    if "svm_tutorial" in q:
        d = abs(q["svm_tutorial"] - q["svm_cnncodes"])
        print(f"  LinearSVC held-out accuracy (train/ -> val/): tutorial codes {q['svm_tutorial']:.2f}%, "
              f"cnncodes codes {q['svm_cnncodes']:.2f}%, difference {d:.2f} points "
              f"(target <= {TARGET_ACC}: {verdict(d <= TARGET_ACC)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per contender (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="small smoke run (few images, one round, small large set)")
    ap.add_argument("--large", dest="large", action="store_true", default=None,
                    help="also run the 12-megapixel part (default: on, off with --quick)")
    ap.add_argument("--no-large", dest="large", action="store_false")
    ap.add_argument("--repeat", type=int, default=1,
                    help="use every image N times (symlinks), so start-up weighs less (default 1)")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return common.serve_child(args.child, {
            "tutorial": lambda root, save: child_tutorial(Path(root), Path(save)),
            "cnncodes": lambda root, save, cache: child_cnncodes(Path(root), Path(save), cache),
            "model": lambda which, n_images: child_model(which, int(n_images))})

    rounds = args.rounds or (1 if args.quick else 3)
    large = (not args.quick) if args.large is None else args.large
    if args.quick and not os.environ.get("CNNCODES_BENCH_FULL_SET"):
        os.environ.setdefault("CNNCODES_BENCH_SYNTHETIC", "1")
    root, desc = common.repeated(*common.standard_images(args.quick), args.repeat)
    print(f"extract speed: MobileNetV2 penultimate codes, {rounds} alternating round(s); {common.load_average()}")
    print(f"images: {desc}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-bench-") as tmp:
        tmp = Path(tmp)
        res, info = measure(root, rounds, tmp, 64 if args.quick else 400, True, "std")
        report(f"standard photos: {desc}", res, info, quality(tmp, "std", True), TARGET_RATIO, True)
        if large:
            lroot, ldesc = common.repeated(*common.large_images(args.quick), args.repeat)
            print(f"\nlarge photos: {ldesc}")
            res, info = measure(lroot, rounds, tmp, 0, False, "large")
            report(f"large photos: {ldesc}", res, info, quality(tmp, "large", False), TARGET_LARGE, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
