#!/usr/bin/env python
"""Extraction speed: the PyTorch transfer-learning tutorial loop against ``cnncodes extract``.

Both sides compute MobileNetV2 penultimate codes (ReLU'd, average-pooled, 1280-D) of the same
images with the same embedded ImageNet weights:

* tutorial: ``datasets.ImageFolder`` per split with ``Resize(256), CenterCrop(224), ToTensor(),
  Normalize(...)``, ``DataLoader(batch_size=4, num_workers=4)``, ``model.classifier = Identity()``
  and a plain fp32 forward under ``torch.no_grad()`` -- as in the tutorial, only ``shuffle=False``
  so that codes can be matched by path (shuffling does not change the speed).
* cnncodes: ``extract.extract_codes(root, out.h5)`` with its defaults, the HDF5 file included:
  ``--precision auto`` (bf16 where the CPU has native bf16, else fp32) and ``fp32`` forced; and
  the previous release (``OLD_RELEASE``, TorchScript + oneDNN Graph, its trace cache filled), built
  from git (``git archive``) and run with its own code, so old and new are measured side by side.

Each timed run is a fresh child process; the two sides alternate (ABAB, then BABA) for
``--rounds`` rounds and the report gives medians and the median of per-round ratios, because the
machine may be shared. Both are timed from "imports done" to "all codes computed" (model loading
included on both sides). Model-alone throughput (pre-decoded uint8 batches through cnncodes'
inference path with the same settings, and the old release's) is measured in the same rounds,
next to OpenVINO measured alone (the same network converted and compiled with OpenVINO's own
throughput defaults, no cnncodes code in the loop). Each cnncodes child also reports its fixed
cost: process start to the first computed batch, and the assembly of the file.

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
TARGET_RATIO, TARGET_BF16_RATIO, TARGET_LARGE, TARGET_ACC = 2.5, 3.5, 8.0, 0.5
TARGET_COS_FP32, TARGET_COS_BF16, TARGET_OPENVINO = 0.9999, 0.999, 0.90
TARGET_FP32_OLD, TARGET_FP32_TUTORIAL, TARGET_BF16_TUTORIAL = 1.2, 4.0, 6.0  # issue 26, whole process
OLD_RELEASE = "24d56fc"  # the last release on TorchScript + oneDNN Graph
# the cnncodes contenders: name -> (precision, how the report describes it)
CNNCODES_RUNS = {"cnncodes": ("auto", "--precision auto"), "cnncodes-fp32": ("fp32", "--precision fp32")}
# model alone (pre-made batches): each end-to-end contender's own forward, and OpenVINO alone
MODEL_RUNS = ("model-cnncodes", "model-cnncodes-fp32", "model-openvino", "model-old", "model-tutorial")


# ============================================================================ children (fresh processes)
def child_tutorial(root: Path, save: Path) -> dict:
    import numpy as np
    import torch
    from torch import nn
    from torchvision import datasets, models, transforms

    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.weights import embedded_checkpoint, locate_weights

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


def child_cnncodes(root: Path, save: Path, precision: str, launched: str) -> dict:
    """``extract_codes`` with its defaults (``precision`` aside); ``launched``: the parent's clock when it
    started this process, for the fixed cost from process start to the first computed batch."""
    from cnncodes import pipeline
    pipeline.process_settings()  # what the command line sets before torch loads
    import numpy as np

    from cnncodes.extract import extract_codes, runner, writer

    marks = {}
    write_parts, assemble = writer.write_parts, writer.assemble

    def timed_parts(batches, *args, **kwargs):
        def first_marked():
            for batch in batches:
                marks.setdefault("first_batch", time.time())
                yield batch
        return write_parts(first_marked(), *args, **kwargs)

    def timed_assembly(*args, **kwargs):
        t = common.now()
        assemble(*args, **kwargs)
        marks["assembly"] = common.now() - t

    writer.write_parts, writer.assemble = timed_parts, timed_assembly
    out = save.with_suffix(".h5")
    t0 = common.now()
    result = extract_codes(root, out, backbone="mobilenet_v2", layers=("penultimate",), overwrite=True,
                           progress=False, precision=precision)
    seconds = common.now() - t0
    import h5py  # after the call: extract imports it once its decoders run

    with h5py.File(out, "r") as h5:
        codes = h5["codes/penultimate"][()]
        paths = h5["paths"].asstr()[()]
        attrs = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in h5.attrs.items()
                 if k in ("precision", "device", "dtype")}
    np.savez(save, codes=codes, paths=np.array([str(p) for p in paths], dtype=str))
    out.unlink()
    from cnncodes.extract.device import Device  # not torch's: its import would count in this whole process

    return {"images": int(len(paths)), "seconds": seconds, "failures": len(result.failures),
            "workers": runner.default_workers(Device("cpu")), "runtime": result.runtime,
            "to_first_batch": marks["first_batch"] - float(launched), "assembly": marks["assembly"], **attrs}


def child_model(which: str, n_images: int) -> dict:
    """Model alone: pre-made batches, no decoding. cnncodes: uint8 batches through its own computer
    and streams (``computer.map``), with its defaults (cnncodes-fp32: fp32 forced). openvino: the
    tutorial's network converted and compiled by OpenVINO with its own throughput defaults, bf16
    where the CPU has it, fed from an AsyncInferQueue. tutorial: the plain fp32 forward."""
    from cnncodes import pipeline
    pipeline.process_settings()  # as in child_cnncodes, for every contender: the same OpenMP settings
    import torch

    torch.manual_seed(0)
    if which.startswith("cnncodes"):
        from cnncodes.extract import runner

        computer, bs, desc = runner.inference_setup(backbone="mobilenet_v2", layers=("penultimate",),
                                                    precision="fp32" if which == "cnncodes-fp32" else "auto")
        premade = PremadeImages(n_images + 4 * bs)
        warm = 4
        stream = ((torch.stack([premade.image] * bs), torch.ones(bs, dtype=torch.bool), [""] * bs)
                  for _ in range(len(premade) // bs))
        for k, _ in enumerate(computer.map(stream)):
            if k == warm - 1:
                t0, done = common.now(), 0
            elif k >= warm:
                done += bs
        return {"images": done, "seconds": common.now() - t0, "settings": desc}
    model, bs = _tutorial_model(), 4
    if which == "openvino":
        return _openvino_alone(model, bs, n_images)
    desc = "cpu fp32 batch 4 NCHW no_grad (tutorial)"
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


def child_agreement(root: Path, n_images: int) -> dict:
    """Codes of the same decoded pixels (the first ``n_images`` of ``root``) from the eager tap model,
    OpenVINO fp32 and OpenVINO bf16: mean and lowest per-image cosine, fp32 to eager and bf16 to fp32."""
    from cnncodes import pipeline
    pipeline.process_settings()
    import numpy as np
    import torch

    from cnncodes.extract import eager as inference, runner
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.batches import stack_images
    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.taps import resolve_taps
    from cnncodes.extract.weights import build_model, locate_weights

    bb = get_backbone("mobilenet_v2")
    prep, listing = preprocess_config(bb), list_images(root)
    model = build_model(bb, locate_weights(bb))
    taps = resolve_taps(bb, model, ["penultimate"], "avg", prep["crop"])
    images = ImageDataset(listing.root, listing.paths[:n_images], prep["resize"], prep["crop"], prep["interpolation"])
    pixels, ok, _ = stack_images([images[i] for i in range(len(images))])
    pixels = pixels[ok]
    eager = inference.CodeComputer(inference.Normalized(inference._tap_model(model, taps), prep).eval(),
                                   torch.device("cpu"), "fp32", 4)
    codes = {"eager": eager(pixels)["penultimate"].numpy()}
    for precision in ("fp32", "bf16"):
        computer = runner.inference_setup(precision=precision, device="cpu")[0]
        codes[precision] = np.concatenate([computer(pixels[i:i + 4])["penultimate"].numpy()
                                           for i in range(0, len(pixels), 4)])

    def cosines(a, b):
        return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)

    fp32, bf16 = cosines(codes["eager"], codes["fp32"]), cosines(codes["fp32"], codes["bf16"])
    return {"images": int(len(pixels)), "fp32_eager": [float(fp32.mean()), float(fp32.min())],
            "bf16_fp32": [float(bf16.mean()), float(bf16.min())]}


def child_old(root: Path, save: Path, model_images: str) -> dict:
    """The previous release's own benchmark children, with its code first on the path: extraction, or model alone."""
    tree = Path(os.environ["CNNCODES_OLD_TREE"])
    sys.path[:] = [str(tree / "bench"), str(tree), *(p for p in sys.path if p and Path(p).resolve() != common.REPO)]
    old = __import__("extract_speed_old")
    if model_images != "-":
        return old.child_model("cnncodes", int(model_images))
    return old.child_cnncodes(root, save, "on")


def _tutorial_model():
    import torch
    from torch import nn
    from torchvision import models

    from cnncodes.extract.weights import embedded_checkpoint

    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(embedded_checkpoint("mobilenet_v2"), weights_only=True))
    model.classifier = nn.Identity()
    return model.eval()


def _openvino_alone(model, bs: int, n_images: int) -> dict:
    import numpy as np
    import torch

    from cnncodes.extract import openvino_model
    from cnncodes.extract.device import native_bf16

    ov = openvino_model.ov()  # without its telemetry, as cnncodes imports it
    core = ov.Core()
    precision = "bf16" if native_bf16() else "f32"
    with openvino_model.no_telemetry():  # offline, as cnncodes converts
        converted = ov.convert_model(torch.export.export(model, (torch.zeros(bs, 3, 224, 224),)))
    compiled = core.compile_model(converted, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT",
                                                     "INFERENCE_PRECISION_HINT": precision})
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, requests)
    batch = np.random.default_rng(0).standard_normal((bs, 3, 224, 224)).astype(np.float32)
    for _ in range(2 * requests):
        queue.start_async({0: batch})
    queue.wait_all()
    done, t0 = 0, common.now()
    while done < n_images:
        queue.start_async({0: batch})
        done += bs
    queue.wait_all()
    return {"images": done, "seconds": common.now() - t0,
            "settings": f"OpenVINO {ov.__version__} alone, {precision}, throughput hint, {requests} requests"}


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
def old_release(commit: str = OLD_RELEASE) -> Path:
    """The previous release's source tree, unpacked from git once (``git archive``), with its
    benchmark script importable as ``extract_speed_old``."""
    tree = common.CACHE / f"cnncodes-{commit}"
    if not (tree / ".complete").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(common.REPO), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        shutil.copy(tree / "bench" / "extract_speed.py", tree / "bench" / "extract_speed_old.py")
        (tree / ".complete").write_text(commit)
    return tree


def _old_env(tree: Path) -> dict:
    return {**os.environ, "CNNCODES_OLD_TREE": str(tree), "CNNCODES_CACHE_DIR": os.environ["CNNCODES_OLD_CACHE_DIR"]}


def measure(root: Path, rounds: int, tmp: Path, model_images: int, with_model: bool, label: str):
    old = old_release()
    names = ["tutorial", *CNNCODES_RUNS, "old"]
    if with_model:
        names += [*MODEL_RUNS]
    res = common.Rounds(names)
    info: dict[str, list[dict]] = {n: [] for n in names}
    os.environ["CNNCODES_CACHE_DIR"] = str(tmp / "openvino")  # converted models, filled by the untimed runs
    os.environ["CNNCODES_OLD_CACHE_DIR"] = str(tmp / "traces")  # the old release's trace cache
    for precision, _ in CNNCODES_RUNS.values():
        common.run_child(SCRIPT, ["cnncodes", str(root), str(tmp / "prime.npz"), precision, str(time.time())])
    common.run_child(SCRIPT, ["old", str(root), str(tmp / "prime.npz"), "-"], env=_old_env(old))
    for r in range(rounds):
        for name in common.order_for(r, names):
            started = common.now()
            if name == "model-old":
                out = common.run_child(SCRIPT, ["old", "-", "-", str(model_images)], env=_old_env(old))
            elif name.startswith("model-"):
                out = common.run_child(SCRIPT, ["model", name.split("-", 1)[1], str(model_images)])
            elif name == "old":
                out = common.run_child(SCRIPT, ["old", str(root), str(tmp / f"{label}-old.npz"), "-"],
                                       env=_old_env(old))
            elif name in CNNCODES_RUNS:
                out = common.run_child(SCRIPT, ["cnncodes", str(root), str(tmp / f"{label}-{name}.npz"),
                                                CNNCODES_RUNS[name][0], str(time.time())])
            else:
                out = common.run_child(SCRIPT, [name, str(root), str(tmp / f"{label}-{name}.npz")])
            out["process_seconds"] = common.now() - started
            rate = res.add(name, out["images"], out["seconds"])
            info[name].append(out)
            print(f"  round {r + 1}/{rounds}  {name:15s} {rate:7.1f} images/s  ({out['images']} images, "
                  f"{out['seconds']:.1f} s, whole process {out['process_seconds']:.1f} s; {common.load_average()})",
                  flush=True)
    return res, info


def quality(tmp: Path, label: str, with_svm: bool) -> dict:
    import numpy as np

    sets = {n: np.load(tmp / f"{label}-{n}.npz") for n in ("tutorial", *CNNCODES_RUNS, "old")}

    def matched(a: str, b: str):
        return common.match_by_path(list(sets[a]["paths"]), sets[a]["codes"], list(sets[b]["paths"]), sets[b]["codes"])

    paths, eager, fp32 = matched("tutorial", "cnncodes-fp32")
    _, _, auto = matched("tutorial", "cnncodes")
    out = {"matched": len(paths), "tutorial_n": len(sets["tutorial"]["paths"]),
           "cnncodes_n": len(sets["cnncodes"]["paths"]), "cos_fp32_eager": common.mean_cosine(eager, fp32),
           "cos_auto_fp32": common.mean_cosine(fp32, auto), "cos_old_eager": common.mean_cosine(eager, matched(
               "tutorial", "old")[2])}
    if with_svm and any(p.startswith("val/") for p in paths):
        out["svm"] = {n: common.svm_accuracy(paths, c) for n, c in (("tutorial", eager), ("fp32", fp32),
                                                                     ("auto", auto))}
    return out


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def _median(info: dict, name: str, key: str) -> float:
    return statistics.median(o[key] for o in info[name])


def report(title: str, res: common.Rounds, info: dict, q: dict, target_ratio: float, with_model: bool) -> None:
    auto = info["cnncodes"][0]
    print(f"\n== {title}")
    print(f"  tutorial loop   {res.median('tutorial'):7.1f} images/s   (rounds: {res.spread('tutorial')}; "
          f"{info['tutorial'][0].get('threads')} torch threads, 4 workers, batch 4, fp32)")
    for name, (_, how) in CNNCODES_RUNS.items():
        print(f"  {name:16s}{res.median(name):7.1f} images/s   (rounds: {res.spread(name)}; {how}: "
              f"{info[name][0]['runtime']}, {info[name][0]['workers']} decode workers)")
    print(f"  old {OLD_RELEASE}     {res.median('old'):7.1f} images/s   (rounds: {res.spread('old')}; TorchScript + "
          f"oneDNN Graph fp32, trace cache filled)")
    for name in (*CNNCODES_RUNS, "old"):
        ratio = res.ratio(name, "tutorial")
        whole = statistics.median(t["process_seconds"] / c["process_seconds"] for t, c in zip(info["tutorial"],
                                                                                               info[name]))
        print(f"  ratio {name} / tutorial: {ratio:.2f}x, whole process {whole:.2f}x")
    new_old = res.ratio("cnncodes-fp32", "old")
    print(f"  fp32 end to end, new / old: {new_old:.2f}x   (target >= 1: {verdict(new_old >= 1)})")
    if auto.get("precision") == "bf16":
        whole = statistics.median(t["process_seconds"] / c["process_seconds"] for t, c in zip(info["tutorial"],
                                                                                               info["cnncodes"]))
        print(f"  bf16 whole process / tutorial whole process: {whole:.2f}x   (target >= {TARGET_BF16_RATIO}: "
              f"{verdict(whole >= TARGET_BF16_RATIO)})")
    for name in CNNCODES_RUNS:
        print(f"  fixed cost of {name}: process start to first batch {_median(info, name, 'to_first_batch'):.2f} s, "
              f"assembly {_median(info, name, 'assembly'):.3f} s (medians)")
    if with_model:
        for name in MODEL_RUNS:
            print(f"  {name:16s}{res.median(name):7.1f} images/s   ({info[name][0]['settings']}; "
                  f"rounds: {res.spread(name)})")
        frac = res.ratio("model-cnncodes", "model-openvino")
        print(f"  model alone, cnncodes / OpenVINO alone: {frac:.0%}   (target >= {TARGET_OPENVINO:.0%}: "
              f"{verdict(frac >= TARGET_OPENVINO)})")
        for name in (*CNNCODES_RUNS, "old"):
            base = f"model-{name}"
            print(f"  {name} end to end / its model alone: {res.ratio(name, base):.0%}")
    print(f"  images: tutorial {q['tutorial_n']}, cnncodes {q['cnncodes_n']}, matched by path {q['matched']}")
    print(f"  cosine, fp32 codes to the tutorial's eager ones: {q['cos_fp32_eager']:.5f}   (target >= "
          f"{TARGET_COS_FP32}: {verdict(q['cos_fp32_eager'] >= TARGET_COS_FP32)}); old release's: "
          f"{q['cos_old_eager']:.5f}")
    print(f"  cosine, {auto.get('precision')} (auto) codes to fp32 ones: {q['cos_auto_fp32']:.5f}   (target >= "
          f"{TARGET_COS_BF16}: {verdict(q['cos_auto_fp32'] >= TARGET_COS_BF16)})")
    if "agreement" in q:
        a = q["agreement"]
        print(f"  same pixels ({a['images']} images), OpenVINO fp32 to the eager tap model: cosine mean "
              f"{a['fp32_eager'][0]:.6f}, lowest {a['fp32_eager'][1]:.6f} (target >= {TARGET_COS_FP32}: "
              f"{verdict(a['fp32_eager'][1] >= TARGET_COS_FP32)}); bf16 to fp32: mean {a['bf16_fp32'][0]:.5f}, "
              f"lowest {a['bf16_fp32'][1]:.5f} (target >= {TARGET_COS_BF16}: "
              f"{verdict(a['bf16_fp32'][0] >= TARGET_COS_BF16)})")
    if "svm" in q:
        svm = q["svm"]
        d = abs(svm["fp32"] - svm["auto"])
        print(f"  LinearSVC held-out accuracy (train/ -> val/): tutorial codes {svm['tutorial']:.2f}%, fp32 "
              f"{svm['fp32']:.2f}%, {auto.get('precision')} {svm['auto']:.2f}%; between precisions {d:.2f} points "
              f"(target <= {TARGET_ACC}: {verdict(d <= TARGET_ACC)})")


def _whole(info: dict, base: str, name: str) -> float:
    """Median over rounds of the per-round ratio of whole-process times, base / name (how much faster name is)."""
    return statistics.median(b["process_seconds"] / n["process_seconds"] for b, n in zip(info[base], info[name]))


def report_issue26(info: dict) -> None:
    """Issue 26's whole-process targets: fp32 against the previous release, and against the tutorial loop."""
    fp32_old, fp32_tut = _whole(info, "old", "cnncodes-fp32"), _whole(info, "tutorial", "cnncodes-fp32")
    print(f"  issue 26, whole process, median of per-round ratios: fp32 / previous release {fp32_old:.2f}x (target >= "
          f"{TARGET_FP32_OLD}: {verdict(fp32_old >= TARGET_FP32_OLD)}); fp32 / tutorial {fp32_tut:.2f}x (target >= "
          f"{TARGET_FP32_TUTORIAL}: {verdict(fp32_tut >= TARGET_FP32_TUTORIAL)})")
    auto = info["cnncodes"][0].get("precision")
    auto_old, auto_tut = _whole(info, "old", "cnncodes"), _whole(info, "tutorial", "cnncodes")
    target = TARGET_BF16_TUTORIAL if auto == "bf16" else TARGET_FP32_TUTORIAL
    print(f"  issue 26, whole process: --precision auto ({auto}) / previous release {auto_old:.2f}x; / tutorial "
          f"{auto_tut:.2f}x (target >= {target}: {verdict(auto_tut >= target)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per contender (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="small smoke run (few images, one round, small large set)")
    ap.add_argument("--large", dest="large", action="store_true", default=None,
                    help="also run the 12-megapixel part (default: on, off with --quick)")
    ap.add_argument("--no-large", dest="large", action="store_false")
    ap.add_argument("--repeat", type=int, default=1,
                    help="use every image N times (symlinks), so start-up weighs less (default 1)")
    ap.add_argument("--no-model", dest="model", action="store_false",
                    help="skip the model-alone runs (end to end only; bench/extract_bound.py measures the model alone)")
    ap.add_argument("--avx2-only", action="store_true",
                    help="run every child as on a CPU with AVX2 and no AVX-512 (common.AVX2_ONLY: the kernels of "
                         "OpenVINO, torch, MKL and NumPy capped at AVX2, no native bf16)")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        # Every contender's OpenMP threads sleep while they wait, as the command line sets for cnncodes: on
        # a shared machine spinning threads collapse the tutorial's multi-threaded forward 10x or more.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return common.serve_child(args.child, {
            "tutorial": lambda root, save: child_tutorial(Path(root), Path(save)),
            "cnncodes": lambda root, save, precision, launched: child_cnncodes(Path(root), Path(save), precision,
                                                                              launched),
            "old": lambda root, save, model_images: child_old(Path(root), Path(save), model_images),
            "agreement": lambda root, n_images: child_agreement(Path(root), int(n_images)),
            "model": lambda which, n_images: child_model(which, int(n_images))})

    if args.avx2_only:
        common.emulate_avx2_only()
    rounds = args.rounds or (1 if args.quick else 3)
    large = (not args.quick) if args.large is None else args.large
    if args.quick and not os.environ.get("CNNCODES_BENCH_FULL_SET"):
        os.environ.setdefault("CNNCODES_BENCH_SYNTHETIC", "1")
    root, desc = common.repeated(*common.standard_images(args.quick), args.repeat)
    print(f"extract speed: MobileNetV2 penultimate codes, {rounds} alternating round(s); {common.load_average()}")
    print(f"cpu: {common.cpu_line()}")
    print(common.code_line())
    print(f"images: {desc}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-bench-") as tmp:
        tmp = Path(tmp)
        res, info = measure(root, rounds, tmp, 64 if args.quick else 400, args.model, "std")
        q = quality(tmp, "std", True)
        q["agreement"] = common.run_child(SCRIPT, ["agreement", str(root), "32" if args.quick else "128"])
        report(f"standard photos: {desc}", res, info, q, TARGET_RATIO, args.model)
        report_issue26(info)
        if large:
            lroot, ldesc = common.repeated(*common.large_images(args.quick), args.repeat)
            print(f"\nlarge photos: {ldesc}")
            res, info = measure(lroot, rounds, tmp, 0, False, "large")
            report(f"large photos: {ldesc}", res, info, quality(tmp, "large", False), TARGET_LARGE, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
