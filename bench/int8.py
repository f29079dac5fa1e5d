#!/usr/bin/env python
"""int8 against fp32 (and bf16): do NNCF-quantized codes agree, and does the int8 network pay? (issue 26, item 4)

int8 is not an extract option: this script quantizes the tap model itself, as ``--precision int8`` would
(NNCF post-training quantization of extraction's OpenVINO tap model, uint8 images in, its defaults: 300
calibration images), calibrated on up to ``CALIBRATION_SIZE`` of the set's own training images spread
evenly over the listing and decoded as extraction decodes them. Its int8 children run that model through
extraction's own code (listing, decoders, OpenVINO streams, parts, HDF5), with the computer swapped in.

* Agreement and accuracy, per image set (``--sets`` in ``--datasets``): codes in fp32, int8 and bf16, then the
  per-row cosine of int8 and bf16 codes to fp32 codes (min, median) and the cosine over the whole file (all codes as
  one vector), and the val balanced accuracy of the same svm (``cnncodes.train`` as ``cnncodes run`` trains
  it: the train split, C chosen by cross-validation) on each. Bar, for int8: whole-file cosine >= 0.99 and at
  most 0.5 point of balanced accuracy lost, on every set (bf16, shipped, shows where it stands).
* Speed on ``--speed-set``: fp32, int8 and bf16 in alternating rounds, each run a fresh process: end to end
  (extraction's own img/s, and the whole process's seconds) and the model alone (pre-made batches of the
  set's decoded images through extraction's computer and streams).

Needs nncf (not a dependency of cnncodes: ``pip install nncf``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))  # the repository's finetune package before bench/finetune.py

SCRIPT = Path(__file__).resolve()
SETS = ("hymenoptera", "clothing6", "rsscn7_aerial", "sign_digits")
PRECISIONS = ("fp32", "int8", "bf16")
CALIBRATION_SIZE = 300  # NNCF's default subset size
MIN_COSINE, MAX_LOSS = 0.99, 0.5  # the bar (issue 26): whole-file cosine, balanced-accuracy points


# ============================================================================ children (fresh processes)
def _setup():
    """Extraction's preprocessing and network for the default backbone and tap."""
    from cnncodes import pipeline
    pipeline.process_settings()
    import torch

    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.network import prepare
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.taps import MAX_UNPOOLED_DIM
    from cnncodes.extract.weights import locate_weights

    bb = get_backbone("mobilenet_v2")
    prep = preprocess_config(bb)
    network = prepare(bb, locate_weights(bb, None), ["penultimate"], "avg", prep, MAX_UNPOOLED_DIM,
                      torch.device("cpu"))
    return prep, network


def _images(root: str, prep: dict, size: int) -> "np.ndarray":  # noqa: F821
    """Up to ``size`` training images of ``root`` (all images where there is no train split), spread evenly
    over the listing, decoded as extraction decodes them: uint8 [n, 3, crop, crop]."""
    import numpy as np

    from cnncodes.extract.images import ImageDataset
    from cnncodes.extract.reader import list_images

    listing = list_images(root)
    pool = [i for i, s in enumerate(listing.splits) if s not in ("val", "test")] or list(range(len(listing)))
    rows = sorted({pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(size, len(pool)))})
    data = ImageDataset(listing.root, [listing.paths[i] for i in rows], prep["resize"], prep["crop"],
                        prep["interpolation"])
    return np.stack([image.numpy() for image, ok, _ in (data[i] for i in range(len(data))) if ok])


def child_quantize(root: str, xml: str, bias_correction: str = "fast") -> dict:
    """The tap model quantized by NNCF on the set's calibration images, saved as OpenVINO IR at ``xml``;
    ``bias_correction`` full: NNCF's slower BiasCorrection instead of its default FastBiasCorrection."""
    prep, network = _setup()
    import contextlib
    import io

    import nncf
    import torch

    from cnncodes.extract import eager, inference, openvino_model

    t0 = common.now()
    images = _images(root, prep, CALIBRATION_SIZE)
    decoded = common.now() - t0
    fp32 = network.converted or openvino_model.converted(
        eager._eager(network.model, network.taps, prep), torch.zeros(4, *images.shape[1:], dtype=torch.uint8),
        network.key, network.cache_meta())
    t1 = common.now()
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        model = nncf.quantize(fp32, nncf.Dataset([images[i:i + 1] for i in range(len(images))]),
                              subset_size=len(images), fast_bias_correction=bias_correction == "fast")
    quantized = common.now() - t1
    openvino_model.ov().save_model(model, xml, compress_to_fp16=False)
    return {"images": len(images), "decode_s": decoded, "quantize_s": quantized}


def _int8_computer(taps, int8_xml: str, batch_size: int, streams: int, views: int = 1):
    """Extraction's computer on the quantized model, compiled as extraction compiles (the layers NNCF left
    unquantized run in fp32)."""
    from cnncodes.extract import inference, openvino_model

    computer = inference._compiled(lambda: openvino_model._read(Path(int8_xml)), taps, "fp32", batch_size * views, streams,
                                   views)
    computer.precision = "int8"
    return computer


def child_extract(root: str, out: str, precision: str, int8_xml: str) -> dict:
    from cnncodes import pipeline
    pipeline.process_settings()
    from cnncodes.extract import extract_codes, runner

    run_as = precision
    if precision == "int8":  # extraction with the int8 computer swapped in (the file says fp32)
        def int8_computer(network, prep, device, _precision, batch_size, streams=1, views=1):
            return _int8_computer(network.taps, int8_xml, batch_size, streams, views)

        runner.make_computer, run_as = int8_computer, "fp32"
    result = extract_codes(root, out, precision=run_as, progress=False, overwrite=True)
    return {"images": result.n_extracted, "seconds": result.seconds, "runtime": result.runtime}


def child_model(root: str, precision: str, n_images: str, int8_xml: str) -> dict:
    """Pre-made batches of the set's own decoded images through extraction's computer and streams."""
    prep, network = _setup()
    import numpy as np

    from cnncodes.extract import runner

    if precision == "int8":
        settings = runner.Settings.of(runner.RunOptions("cpu", "fp32", progress=False))
        bs = settings.batch_size
        computer = _int8_computer(network.taps, int8_xml, bs, settings.streams)
    else:
        computer, bs, _ = runner.inference_setup(precision=precision)
    images = _images(root, prep, 64)
    n, warm = int(n_images), 4
    batches = ((images[(k * bs) % (len(images) - bs):][:bs], np.ones(bs, bool), [""] * bs)
               for k in range(n // bs + warm))
    for k, (_, done_ok, _) in enumerate(computer.map(batches)):  # a forward pass's images at a time
        if k == warm - 1:
            t0, done = common.now(), 0
        elif k >= warm:
            done += len(done_ok)
    return {"images": done, "seconds": common.now() - t0, "settings": computer.describe()}


# ============================================================================ parent
def extract(root: Path, out: Path, precision: str, int8_xml: Path, env: dict) -> dict:
    """One whole ``extract`` child, its wall time included."""
    t0 = time.perf_counter()
    info = common.run_child(SCRIPT, ["extract", str(root), str(out), precision, str(int8_xml)], env=env)
    info["process"] = time.perf_counter() - t0
    return info


def agreement(fp32: Path, int8: Path) -> dict:
    """Per-row cosines of int8 codes to fp32 codes (rows valid in both) and the whole-file cosine."""
    import numpy as np

    import cnncodes

    a, b = cnncodes.load_codes(fp32), cnncodes.load_codes(int8)
    assert a.paths == b.paths
    x, y = a.X.astype(np.float64), b.X.astype(np.float64)
    rows = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
    whole = float(x.ravel() @ y.ravel() / (np.linalg.norm(x) * np.linalg.norm(y)))
    return {"rows": len(rows), "min": float(rows.min()), "median": float(np.median(rows)), "file": whole}


def svm(codes: Path, out: Path) -> tuple[float, float]:
    """(val balanced accuracy in points, chosen C) of the svm `cnncodes run` trains: C by CV on the train split."""
    import cnncodes

    report = cnncodes.train(codes, out, classifier="svm", overwrite=True, progress=False)
    return 100 * report["balanced_accuracy"], report["C"]


def quality(datasets: Path, sets: list[str], tmp: Path, env: dict, bias_correction: str = "fast") -> bool:
    """int8 and bf16 codes against fp32 codes, set by set; the bar is int8's (bf16 shows what passes today)."""
    print("\n| set (rows) | codes | cosine to fp32, per row min / median | whole file | svm bal. acc. fp32 (C) "
          "| these codes (C) | change | int8 calibration: images, decode + quantize |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    passed = True
    for name in sets:
        root = datasets / name
        if not root.is_dir():
            print(f"| {name}: missing at {root}, not measured |")
            passed = False
            continue
        xml = tmp / f"{name}-int8.xml"
        cal = common.run_child(SCRIPT, ["quantize", str(root), str(xml), bias_correction], env=env)
        for p in PRECISIONS:
            extract(root, tmp / f"{name}-{p}.h5", p, xml, env)
        acc32, c32 = svm(tmp / f"{name}-fp32.h5", tmp / f"{name}-fp32-svm")
        for p in ("int8", "bf16"):
            agree = agreement(tmp / f"{name}-fp32.h5", tmp / f"{name}-{p}.h5")
            acc, c = svm(tmp / f"{name}-{p}.h5", tmp / f"{name}-{p}-svm")
            ok = agree["file"] >= MIN_COSINE and acc32 - acc <= MAX_LOSS
            passed &= ok or p != "int8"
            calibration = (f"{cal['images']}, {cal['decode_s']:.1f} + {cal['quantize_s']:.1f} s"
                           if p == "int8" else "")
            print(f"| {name} ({agree['rows']}) | {p} | {agree['min']:.4f} / {agree['median']:.5f} "
                  f"| {agree['file']:.5f} | {acc32:.2f} ({c32:g}) | {acc:.2f} ({c:g}) | {acc - acc32:+.2f} "
                  f"{'within the bar' if ok else 'outside the bar'} | {calibration} |", flush=True)
    print(f"\nbar for int8: whole-file cosine >= {MIN_COSINE} and at most {MAX_LOSS} point lost on every set: "
          f"{'PASSED' if passed else 'FAILED'}")
    return passed


def speed(root: Path, rounds: int, model_images: int, tmp: Path, env: dict) -> None:
    xml = tmp / f"{root.name}-int8.xml"
    if not xml.exists():
        common.run_child(SCRIPT, ["quantize", str(root), str(xml)], env=env)
    e2e, alone = common.Rounds(list(PRECISIONS)), common.Rounds(list(PRECISIONS))
    process: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    runtimes: dict[str, str] = {}
    for r in range(rounds):
        for p in common.order_for(r, list(PRECISIONS)):
            info = extract(root, tmp / f"speed-{p}.h5", p, xml, env)
            e2e.add(p, info["images"], info["seconds"])
            process[p].append(info["process"])
            m = common.run_child(SCRIPT, ["model", str(root), p, str(model_images), str(xml)], env=env)
            alone.add(p, m["images"], m["seconds"])
            runtimes[p] = m["settings"]
        print(f"round {r + 1}: " + ", ".join(f"{p} {e2e.rates[p][-1]:.1f} / {alone.rates[p][-1]:.1f}"
                                            for p in PRECISIONS)
              + f" img/s (end to end / model alone; {common.load_average()})", flush=True)
    print(f"\n| {root.name}, {rounds} rounds | runtime | model alone img/s | / fp32 | end to end img/s | / fp32 "
          "| whole process (median) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for p in PRECISIONS:
        print(f"| {p} | {runtimes[p]} | {alone.median(p):.1f} ({alone.spread(p)}) | {alone.ratio(p, 'fp32'):.2f}x "
              f"| {e2e.median(p):.1f} ({e2e.spread(p)}) | {e2e.ratio(p, 'fp32'):.2f}x "
              f"| {statistics.median(process[p]):.1f} s |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--datasets", type=Path, default=common.HYMENOPTERA.parent, help="folder of the image sets")
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="image sets in --datasets")
    parser.add_argument("--speed-set", default="hymenoptera", help="the set the speed rounds extract")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-images", type=int, default=400, help="images per model-alone measurement")
    parser.add_argument("--skip", choices=("quality", "speed"), action="append", default=[])
    parser.add_argument("--bias-correction", choices=("fast", "full"), default="fast",
                        help="NNCF's bias correction in the quality part (default: fast, NNCF's own default)")
    args = parser.parse_args(argv)
    if args.child:
        return common.serve_child(args.child, {"quantize": child_quantize, "extract": child_extract,
                                               "model": child_model})
    import importlib.util
    from importlib.metadata import version

    if importlib.util.find_spec("nncf") is None:
        print("bench/int8.py needs nncf: pip install nncf", file=sys.stderr)
        return 2
    print(f"cpu: {common.cpu_line()}; {common.load_average()}")
    print("versions: " + ", ".join(f"{p} {version(p)}" for p in ("torch", "openvino", "nncf")))
    with tempfile.TemporaryDirectory(prefix="cnncodes-int8-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "CNNCODES_CACHE_DIR": str(tmp / "cache"), "OMP_WAIT_POLICY": "PASSIVE",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")]))}
        if "quality" not in args.skip:
            quality(args.datasets, args.sets, tmp, env, args.bias_correction)
        if "speed" not in args.skip:
            speed(args.datasets / args.speed_set, args.rounds, args.model_images, tmp, env)
    print(f"\n{common.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
