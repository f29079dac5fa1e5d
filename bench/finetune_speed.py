#!/usr/bin/env python
"""Fine-tuning speed: time per training image of ``cnncodes finetune`` against the PyTorch tutorial's loop.

Both sides fine-tune MobileNetV2 from the same embedded ImageNet weights on the same ``train/`` images:

* tutorial (the transfer-learning tutorial's fine-tuning loop, one epoch of its training phase):
  ``ImageFolder`` + ``RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(...)``,
  ``DataLoader(batch_size=4, shuffle=True, num_workers=4)``, every layer trained, a new
  ``Linear(1280, classes)`` head, ``CrossEntropyLoss``, ``SGD(lr=0.001, momentum=0.9)``, fp32.
* cnncodes: ``finetune_images(set, out, epochs=--epochs)`` with every other option at its default
  (it trains on train/ less its validation carve; val/ is the evaluation split).

Per image: the training loop's seconds over the images it trained on (the tutorial decodes every
epoch, so its decoding is in; cnncodes' one-time decode cache and both model loads are out), and the
whole process (start to exit) over the trained images. Each run is a fresh process; the two alternate
(ABAB, then BABA) for ``--rounds`` rounds and the ratio is the median of per-round ratios. Every
child's OpenMP threads sleep while waiting (``OMP_WAIT_POLICY=PASSIVE``, as the command line sets).

``--breakdown`` then times finetune's own step (its Trainer on its decoded cache) part by part with
wall-clock marks: data (augment, collate, normalize), forward of the frozen blocks, forward of the
trained part, backward (with the loss), optimizer; and the same step in the variants that could pay:
NCHW instead of channels-last, the frozen blocks under ``torch.no_grad``, one torch thread, batch
augmentation in a worker process, bf16 autocast (an option where the CPU has native bf16).

    python bench/finetune_speed.py                         # hymenoptera and rsscn7_aerial, 2 rounds
    python bench/finetune_speed.py --sets hymenoptera --rounds 3 --epochs 2 --no-breakdown
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, BENCH)
import common  # noqa: E402

# bench/finetune.py would shadow the finetune package: import that from the repository instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(BENCH)]

SCRIPT = Path(__file__).resolve()
DATASETS = Path(os.environ.get("CNNCODES_DATASETS", common.REPO.parent / "shared" / "datasets"))
TARGET = 2.0  # issue 26, item 5: cnncodes' time per training image at least 2x better than the tutorial's
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ============================================================================ children (fresh processes)
def child_tutorial(train_dir: str, launched: str) -> dict:
    """One training epoch of the tutorial's fine-tuning loop (its ``train_model``, phase 'train')."""
    t_import = time.time()
    import torch
    from torch import nn, optim
    from torchvision import datasets, models, transforms

    from extract.weights import embedded_checkpoint

    imported = time.time()
    model_ft = models.mobilenet_v2()
    model_ft.load_state_dict(torch.load(embedded_checkpoint("mobilenet_v2"), weights_only=True))
    transform = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(train_dir, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=4)
    model_ft.classifier[1] = nn.Linear(model_ft.classifier[1].in_features, len(dataset.classes))
    criterion = nn.CrossEntropyLoss()
    optimizer_ft = optim.SGD(model_ft.parameters(), lr=0.001, momentum=0.9)
    loaded = time.time()
    model_ft.train()
    running_loss, running_corrects = 0.0, 0
    for inputs, labels in loader:
        optimizer_ft.zero_grad()
        with torch.set_grad_enabled(True):
            outputs = model_ft(inputs)
            _, preds = torch.max(outputs, 1)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer_ft.step()
        running_loss += loss.item() * inputs.size(0)
        running_corrects += torch.sum(preds == labels.data)
    done = time.time()
    return {"images": len(dataset), "train_seconds": done - loaded, "imports": imported - t_import,
            "model_load": loaded - imported, "threads": torch.get_num_threads(),
            "process_seconds": done - float(launched)}


def child_cnncodes(images: str, out: str, epochs: str, launched: str) -> dict:
    """``finetune_images`` with its defaults; the decode cache timed by wrapping ``_decode_splits``."""
    import pipeline

    pipeline.process_settings()
    from finetune import finetune_images, train

    marks = {}
    decode_splits = train._decode_splits

    def timed_decode(*args, **kwargs):
        t = time.time()
        data = decode_splits(*args, **kwargs)
        marks["decode"] = time.time() - t
        marks["decoded"] = sum(len(data[k]) for k in ("train", "val", "test"))
        return data

    train._decode_splits = timed_decode
    report = finetune_images(images, out, epochs=int(epochs), progress=False, overwrite=True)
    history = report["finetune"]["history"]
    return {"images": sum(r["images"] for r in history), "train_seconds": sum(r["train_seconds"] for r in history),
            "epoch_seconds": sum(r["seconds"] for r in history), "n_train": report["n_train"],
            "frozen": len(report["finetune"]["frozen_units"]), "process_seconds": time.time() - float(launched),
            "decode_seconds": marks["decode"], "decoded": marks["decoded"],
            "balanced_accuracy": report["balanced_accuracy"]}


def child_breakdown(images: str, variant: str, steps: str) -> dict:
    """Time ``steps`` of finetune's own Trainer step, part by part, in one ``variant`` (see VARIANTS)."""
    import pipeline

    pipeline.process_settings()
    import torch

    from extract.backbones import get_backbone
    from extract.recipe import preprocess_config
    from extract.reader import list_images
    from extract.weights import build_model, locate_weights
    from finetune import model as ft_model
    from finetune import trainer as ft_trainer
    from finetune.data import choose_splits, default_workers, normalize
    from finetune.options import FinetuneConfig
    from finetune.train import _decode_splits

    options = {name: f.default for name, f in FinetuneConfig.__dataclass_fields__.items()}
    options["epochs"] = 2
    torch.set_num_threads(1 if variant == "1 torch thread" else default_workers())
    bb = get_backbone("mobilenet_v2")
    prep = preprocess_config(bb, None, None)
    listing = list_images(images)
    splits = choose_splits(listing, listing.labels >= 0, options["val_fraction"], 0)
    data = _decode_splits(listing, splits, prep, default_workers(), False, lambda m: None)
    torch.manual_seed(0)
    net = ft_model.build_network(build_model(bb, locate_weights(bb, None)), bb, len(listing.class_names),
                                 options["freeze"], None)
    if variant == "NCHW":
        ft_trainer.normalize = lambda b, m, s: normalize(b, m, s).contiguous()
    else:
        ft_model.place(net.model, torch.device("cpu"))
    precision = "bf16" if variant == "bf16 autocast" else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ft_trainer.Trainer(net, data, listing.class_names, options, {}, torch.device("cpu"), precision,
                                     Path(tmp), lambda m: None, False)
        ft_model.set_trainable(net, backbone_too=True)
        ft_model.train_mode(net, options["train_bn"])  # as Trainer._epoch does, before frozen_inference
        marks = _instrument(trainer, no_grad_frozen=variant == "frozen blocks under no_grad only")
        loader = _loader(trainer, workers=1 if variant == "augment in a worker" else 0)
        plain = variant.startswith("frozen blocks")  # without finetune's frozen_inference (as before issue 26)
        with nullcontext() if plain else ft_model.frozen_inference(net):
            parts = _time_steps(trainer, loader, marks, int(steps))
    return {"variant": variant, "batch": options["batch_size"], "frozen": net.n_frozen, "units": len(net.units),
            "threads": torch.get_num_threads(), **parts}


VARIANTS = ("default", "frozen blocks as model.train leaves them", "frozen blocks under no_grad only", "NCHW",
            "1 torch thread", "augment in a worker", "bf16 autocast")


def _instrument(trainer, no_grad_frozen: bool) -> dict:
    """Wall-clock marks around the model's forward, the end of its frozen blocks and the optimizer step."""
    import torch

    from finetune.model import frozen_span

    marks: dict = {}
    model = trainer.net.model
    span = frozen_span(trainer.net)
    model.register_forward_pre_hook(lambda *a: marks.__setitem__("forward", time.perf_counter()))
    model.register_forward_hook(lambda *a: marks.__setitem__("forward_end", time.perf_counter()))
    if span:
        first, last = model.get_submodule(span[0]), model.get_submodule(span[-1])
        grad = {}
        if no_grad_frozen:
            def enter(*a):
                grad["ctx"] = torch.no_grad()
                grad["ctx"].__enter__()

            first.register_forward_pre_hook(enter)
        def leave(*a):
            if grad:
                grad.pop("ctx").__exit__(None, None, None)
            marks["frozen_end"] = time.perf_counter()

        last.register_forward_hook(leave)
    step = trainer.optimizer.step

    def timed_step(*args, **kwargs):
        marks["optimizer"] = time.perf_counter()
        out = step(*args, **kwargs)
        marks["optimizer_end"] = time.perf_counter()
        return out

    trainer.optimizer.step = timed_step
    warnings.filterwarnings("ignore", re.escape("Seems like `optimizer.step()` has been overridden"))  # this wrapper
    return marks


def _loader(trainer, workers: int):
    """The training loader of Trainer._epoch (one epoch of the cache), optionally augmenting in a worker."""
    from torch.utils.data import DataLoader

    from extract.batches import fork_context
    from finetune.data import CachedImages, epoch_sampler

    data, opt = trainer.data, trainer.opt
    dataset = CachedImages(data["train"], data["train_labels"], data["crop"], opt["augment"], data["interpolation"])
    sampler = epoch_sampler(data["train_labels"], opt["sampling"], opt["seed"], 0)
    extra = {"num_workers": workers, "multiprocessing_context": fork_context(), "persistent_workers": True,
             "prefetch_factor": 2} if workers else {}
    return DataLoader(dataset, batch_size=opt["batch_size"], sampler=sampler, drop_last=True, **extra)


def _time_steps(trainer, loader, marks: dict, steps: int) -> dict:
    """Seconds per image of each part of ``steps`` timed steps (after 2 warm-up steps), cycling the loader."""
    parts = {k: 0.0 for k in ("data", "forward_frozen", "forward_trained", "backward", "optimizer", "other")}
    seen, done = 0, 0
    while done < steps + 2:
        end = time.perf_counter()
        for x, y in loader:
            trainer._step(x, y)
            finished = time.perf_counter()
            if done >= 2:
                frozen_end = marks.get("frozen_end", marks["forward"])
                parts["data"] += marks["forward"] - end
                parts["forward_frozen"] += frozen_end - marks["forward"]
                parts["forward_trained"] += marks["forward_end"] - frozen_end
                parts["backward"] += marks["optimizer"] - marks["forward_end"]
                parts["optimizer"] += marks["optimizer_end"] - marks["optimizer"]
                parts["other"] += finished - marks["optimizer_end"]
                seen += len(y)
            done += 1
            end = time.perf_counter()
            if done >= steps + 2:
                break
    return {"images": seen, **{k: v / seen for k, v in parts.items()}}


# ============================================================================================ parent
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--sets", default="hymenoptera,rsscn7_aerial", help="sets of ../shared/datasets")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="cnncodes finetune epochs per run (default 2)")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="time finetune's step part by part, and its variants (default on)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per breakdown variant (default 5)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated breakdown variants")
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return common.serve_child(args.child, {"tutorial": child_tutorial, "cnncodes": child_cnncodes,
                                               "breakdown": child_breakdown})
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    print(f"# finetune speed: MobileNetV2, {args.rounds} alternating round(s); {common.load_average()} at start")
    print(f"# cpu: {common.cpu_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cnncodes-ftspeed-") as tmp:
        for name in args.sets.split(","):
            root = DATASETS / name
            if not (root / "train").is_dir():
                print(f"# {name}: skipped, {root}/train is missing")
                continue
            _compare(name, root, Path(tmp), args, env)
            if args.breakdown:
                _breakdown(name, root, args, env)
    print(f"# {common.load_average()} at the end")
    return 0


def _compare(name: str, root: Path, tmp: Path, args, env: dict) -> None:
    runs: dict[str, list[dict]] = {"tutorial": [], "cnncodes": []}
    for r in range(args.rounds):
        for who in common.order_for(r, list(runs)):
            child = (["tutorial", str(root / "train")] if who == "tutorial"
                     else ["cnncodes", str(root), str(tmp / f"{name}-ft"), str(args.epochs)])
            runs[who].append(common.run_child(SCRIPT, child + [repr(time.time())], timeout=3600, env=env))
    per_image = {who: [1000 * r["train_seconds"] / r["images"] for r in rs] for who, rs in runs.items()}
    whole = {who: [1000 * r["process_seconds"] / r["images"] for r in rs] for who, rs in runs.items()}
    ratio = statistics.median(t / c for t, c in zip(per_image["tutorial"], per_image["cnncodes"]))
    ratio_whole = statistics.median(t / c for t, c in zip(whole["tutorial"], whole["cnncodes"]))
    t, c = runs["tutorial"][0], runs["cnncodes"][0]
    print(f"\n## {name}: tutorial 1 epoch of {t['images']} train/ images ({t['threads']} threads, 4 workers, batch 4); "
          f"cnncodes finetune --epochs {args.epochs} ({c['n_train']} training images, {c['frozen']} blocks frozen)")
    print("| contender | ms per training image (rounds) | whole process, s (rounds) | whole process per trained "
          "image, ms |")
    print("|---|---:|---:|---:|")
    for who in runs:
        print(f"| {who} | {statistics.median(per_image[who]):.1f} ({_spread(per_image[who])}) | "
              f"{statistics.median(r['process_seconds'] for r in runs[who]):.1f} "
              f"({_spread([r['process_seconds'] for r in runs[who]])}) | {statistics.median(whole[who]):.1f} |")
    print(f"ratio tutorial / cnncodes per training image: **{ratio:.2f}x** (target >= {TARGET:g}x); whole process "
          f"per trained image {ratio_whole:.2f}x")
    decode = [1000 * r["decode_seconds"] / r["decoded"] for r in runs["cnncodes"]]
    print(f"cnncodes one-time decode: {statistics.median(decode):.1f} ms per image ({c['decoded']} images, all "
          f"roles); tutorial imports {t['imports']:.1f} s, model load {t['model_load']:.2f} s; cnncodes evaluation "
          f"balanced accuracy {c['balanced_accuracy']:.3f}", flush=True)


def _breakdown(name: str, root: Path, args, env: dict) -> None:
    print(f"\n### {name}: finetune's step, ms per training image (batch 32, {args.steps} steps after 2 warm-up)")
    print("| variant | data | forward frozen | forward trained | backward | optimizer | other | total |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        r = common.run_child(SCRIPT, ["breakdown", str(root), variant, str(args.steps)], timeout=3600, env=env)
        cells = [1000 * r[k] for k in ("data", "forward_frozen", "forward_trained", "backward", "optimizer", "other")]
        print(f"| {variant} ({r['frozen']}/{r['units']} frozen, {r['threads']} threads) | "
              + " | ".join(f"{v:.1f}" for v in cells) + f" | **{sum(cells):.1f}** |", flush=True)


def _spread(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
