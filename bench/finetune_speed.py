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
trained part, backward (with the loss), optimizer; and the same step in variants, alternating in one
process: without ``model.fused_forward`` (as before issue 26), the frozen blocks under ``torch.no_grad``
alone, NCHW instead of channels-last, one torch thread, augmentation in a worker process, bf16
autocast (an option, ``--precision bf16``, where the CPU has native bf16).

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
from contextlib import contextmanager, nullcontext
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

    from cnncodes.extract.weights import embedded_checkpoint

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
    from cnncodes import pipeline
    pipeline.process_settings()
    from cnncodes.finetune import finetune_images, train

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


def child_breakdown(images: str, steps: str, rounds: str, variants: str) -> dict:
    """finetune's own Trainer step timed part by part, in every variant of ``variants`` (/-separated
    VARIANTS names), alternating: ``rounds`` rounds of ``steps`` timed steps each, one untimed step after
    every switch. One process, so the variants share its load, its decoded cache and its model."""
    from cnncodes import pipeline
    pipeline.process_settings()
    import torch

    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.reader import list_images
    from cnncodes.extract.weights import build_model, locate_weights
    from cnncodes.finetune import model as ft_model
    from cnncodes.finetune import trainer as ft_trainer
    from cnncodes.finetune.data import choose_splits, default_workers
    from cnncodes.finetune.options import FinetuneConfig
    from cnncodes.finetune.train import _decode_splits

    options = {name: f.default for name, f in FinetuneConfig.__dataclass_fields__.items()}
    torch.set_num_threads(default_workers())
    bb = get_backbone("mobilenet_v2")
    listing = list_images(images)
    splits = choose_splits(listing, listing.labels >= 0, options["val_fraction"], options["seed"])
    data = _decode_splits(listing, splits, preprocess_config(bb, None, None), default_workers(), False,
                          lambda message: None)
    torch.manual_seed(0)
    net = ft_model.build_network(build_model(bb, locate_weights(bb, None)), bb, len(listing.class_names),
                                 options["freeze"], None)
    ft_model.place(net.model, torch.device("cpu"))
    names = variants.split("/")
    times: dict[str, list[dict]] = {v: [] for v in names}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ft_trainer.Trainer(net, data, listing.class_names, options, {}, torch.device("cpu"), "fp32",
                                     Path(tmp), lambda m: None, False)
        ft_model.set_trainable(net, backbone_too=True)
        ft_model.train_mode(net, options["train_bn"])  # as Trainer._epoch does, before fused_forward
        marks = _instrument(trainer)
        loaders = {w: _batches(trainer, w) for w in (0, 1)}
        for r in range(int(rounds)):
            for name in common.order_for(r, names):
                settings = VARIANTS[name]
                with _variant(trainer, settings, marks):
                    times[name].append(_time_steps(trainer, loaders[settings.get("workers", 0)], marks, int(steps)))
    return {"frozen": net.n_frozen, "units": len(net.units), "threads": default_workers(),
            "batch": options["batch_size"], "times": times}


# what each variant changes in finetune's step (nothing: its defaults)
VARIANTS = {
    "default": {},
    "as before: no fused_forward (BatchNorm layers; autograd in frozen blocks)": {"fused": False},
    "no fused_forward; frozen blocks under no_grad": {"fused": False, "no_grad": True},
    "NCHW": {"nchw": True},
    "1 torch thread": {"threads": 1},
    "augment in a worker process": {"workers": 1},
    "bf16 autocast": {"bf16": True},
}


@contextmanager
def _variant(trainer, settings: dict, marks: dict):
    """Apply a VARIANTS entry to the trainer and process; undo it on exit."""
    import torch

    from cnncodes.finetune import model as ft_model
    from cnncodes.finetune import trainer as ft_trainer

    threads, model, normalize = torch.get_num_threads(), trainer.net.model, ft_trainer.normalize
    torch.set_num_threads(settings.get("threads", threads))
    if settings.get("nchw"):
        model.to(memory_format=torch.contiguous_format)
        ft_trainer.normalize = lambda *a: normalize(*a).contiguous()
    trainer.amp_dtype = torch.bfloat16 if settings.get("bf16") else None
    marks["no_grad"] = settings.get("no_grad", False)
    try:
        with ft_model.fused_forward(trainer.net) if settings.get("fused", True) else nullcontext():
            yield
    finally:
        torch.set_num_threads(threads)
        ft_trainer.normalize = normalize
        ft_model.place(model, torch.device("cpu"))
        trainer.amp_dtype, marks["no_grad"] = None, False


def _instrument(trainer) -> dict:
    """Wall-clock marks around the model's forward, the end of its frozen blocks and the optimizer step; the
    frozen blocks under no_grad while ``marks["no_grad"]``."""
    import torch

    from cnncodes.finetune.model import frozen_span

    marks: dict = {"no_grad": False}
    model = trainer.net.model
    span = frozen_span(trainer.net)
    model.register_forward_pre_hook(lambda *a: marks.__setitem__("forward", time.perf_counter()))
    model.register_forward_hook(lambda *a: marks.__setitem__("forward_end", time.perf_counter()))
    grad = []

    def enter(*args):
        if marks["no_grad"]:
            grad.append(torch.no_grad())
            grad[-1].__enter__()

    def leave(*args):
        while grad:
            grad.pop().__exit__(None, None, None)
        marks["frozen_end"] = time.perf_counter()

    if span:
        model.get_submodule(span[0]).register_forward_pre_hook(enter)
        model.get_submodule(span[-1]).register_forward_hook(leave)
    step = trainer.optimizer.step

    def timed_step(*args, **kwargs):
        marks["optimizer"] = time.perf_counter()
        out = step(*args, **kwargs)
        marks["optimizer_end"] = time.perf_counter()
        return out

    trainer.optimizer.step = timed_step
    warnings.filterwarnings("ignore", re.escape("Seems like `optimizer.step()` has been overridden"))  # this wrapper
    return marks


def _batches(trainer, workers: int):
    """Endless training batches as Trainer._epoch makes them (augmented from the cache), optionally from a worker."""
    from torch.utils.data import DataLoader

    from cnncodes.extract.batches import fork_context
    from cnncodes.finetune.data import CachedImages, epoch_sampler

    data, opt = trainer.data, trainer.opt
    dataset = CachedImages(data["train"], data["train_labels"], data["crop"], opt["augment"], data["interpolation"])
    extra = {"num_workers": workers, "multiprocessing_context": fork_context(), "persistent_workers": True,
             "prefetch_factor": 2} if workers else {}
    epoch = 0
    while True:
        sampler = epoch_sampler(data["train_labels"], opt["sampling"], opt["seed"], epoch)
        yield from DataLoader(dataset, batch_size=opt["batch_size"], sampler=sampler, drop_last=True, **extra)
        epoch += 1


PARTS = ("data", "forward_frozen", "forward_trained", "backward", "optimizer", "other")


def _time_steps(trainer, batches, marks: dict, steps: int) -> dict:
    """Seconds per image of each part of ``steps`` steps after one untimed step."""
    parts = dict.fromkeys(PARTS, 0.0)
    seen = 0
    for k in range(steps + 1):
        end = time.perf_counter()
        x, y = next(batches)
        trainer._step(x, y)
        finished = time.perf_counter()
        if k == 0:
            continue
        frozen_end = marks.get("frozen_end", marks["forward"])
        parts["data"] += marks["forward"] - end
        parts["forward_frozen"] += frozen_end - marks["forward"]
        parts["forward_trained"] += marks["forward_end"] - frozen_end
        parts["backward"] += marks["optimizer"] - marks["forward_end"]
        parts["optimizer"] += marks["optimizer_end"] - marks["optimizer"]
        parts["other"] += finished - marks["optimizer_end"]
        seen += len(y)
    return {k: v / seen for k, v in parts.items()}


# ============================================================================================ parent
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--sets", default="hymenoptera,rsscn7_aerial", help="sets of ../shared/datasets")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="cnncodes finetune epochs per run (default 2)")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="time finetune's step part by part, and its variants (default on)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (default 3)")
    parser.add_argument("--variants", default="/".join(VARIANTS), help="breakdown variants, separated by /")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="time the tutorial against cnncodes (default on)")
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
            if args.compare:
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
    r = common.run_child(SCRIPT, ["breakdown", str(root), str(args.steps), str(args.rounds), args.variants],
                         timeout=3600, env=env)
    print(f"\n### {name}: finetune's step, ms per training image (batch {r['batch']}, {r['frozen']}/{r['units']} "
          f"blocks frozen, {r['threads']} torch threads; {args.rounds} alternating rounds of {args.steps} steps, "
          "medians)")
    print("| variant | data | forward frozen | forward trained | backward | optimizer | other | total (rounds) | "
          "/ default |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    default = [sum(t.values()) for t in r["times"]["default"]]
    for variant, rounds in r["times"].items():
        totals = [1000 * sum(t.values()) for t in rounds]
        cells = [1000 * statistics.median(t[k] for t in rounds) for k in PARTS]
        ratio = statistics.median(1000 * d / t for d, t in zip(default, totals))
        print(f"| {variant} | " + " | ".join(f"{v:.1f}" for v in cells)
              + f" | **{statistics.median(totals):.1f}** ({_spread(totals)}) | {ratio:.2f}x |", flush=True)


def _spread(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
