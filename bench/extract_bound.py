#!/usr/bin/env python
"""The pipeline bound of extraction: decode alone, model alone, and ``extract`` end to end against both.

On the CPU the decoders and the OpenVINO streams share the same cores, so an image costs the time to
decode it plus the time to run it through the network: the pipeline bound is 1 / (1/decode + 1/model)
images/s, measured on this CPU in the same run. Each side is a fresh child process:

* decode: extract's own decoders (``extract.batches.Decoders``: forked workers, shared-memory slots,
  draft JPEG decoding, the crop-box resize), default workers and batch size, every image of the set,
  timed from starting the workers to the last batch handed over (nothing else runs);
* model: the OpenVINO compiled model extract uses (``runner.inference_setup``, ``computer.map``: same
  batch size, streams and threads) on pre-decoded uint8 batches, after a few warm batches;
* extract: ``extract.extract_codes`` with its defaults but ``precision``, the HDF5 file included, the
  converted model cached; its rate is images over the time inside the call (start-up included: loading
  the network while the decoders start), and the child's whole process is reported beside it.

fp32, and bf16 where the CPU has it natively. Rounds alternate the order (ABC, CBA). It prints rates,
CPU seconds per image of each side, and end to end as a fraction of the bound (target 95%).
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

SCRIPT = Path(__file__).resolve()
TARGET_BOUND = 0.95
SIDES = ("decode", "model", "extract")


# ============================================================================ children (fresh processes)
def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the decoders, once they exit)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _decoders_cpu() -> float:
    """CPU time of the reaped children: the decoders."""
    t = os.times()
    return t.children_user + t.children_system


def child_decode(root: Path) -> dict:
    """Every image of ``root`` through extract's decoders, with extract's defaults; nothing else runs."""
    from cnncodes import pipeline
    pipeline.process_settings()
    from cnncodes.extract import runner, shards
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.batches import Decoders
    from cnncodes.extract.reader import list_images
    from cnncodes.extract.recipe import RunOptions, preprocess_config

    listing, rank = list_images(root), shards.Shard()
    prep = preprocess_config(get_backbone("mobilenet_v2"))
    settings = runner.Settings.of(RunOptions(progress=False), rank)
    rows = list(range(len(listing)))
    cpu0, t0 = _cpu_seconds(), common.now()
    decoders = Decoders(listing, rows, prep, settings.part_size_for(len(rows), rank), settings.batch_size,
                        settings.workers, rank.parts)
    done = sum(len(ok) for _, ok, _ in decoders.batches)
    seconds = common.now() - t0
    del decoders  # the workers exit: their CPU time is counted
    return {"images": done, "seconds": seconds, "cpu": _cpu_seconds() - cpu0, "workers": settings.workers,
            "batch": settings.batch_size}


def child_model(precision: str, n_images: int) -> dict:
    """Pre-decoded uint8 batches through extract's compiled model and streams (``computer.map``)."""
    from cnncodes import pipeline
    pipeline.process_settings()
    import numpy as np

    from cnncodes.extract import runner

    computer, bs, desc = runner.inference_setup(backbone="mobilenet_v2", layers=("penultimate",), precision=precision)
    image = np.random.default_rng(0).integers(0, 256, (bs, 3, 224, 224), dtype=np.uint8)
    ok, errors, warm = np.ones(bs, dtype=bool), [""] * bs, 4
    batches = ((image, ok, errors) for _ in range(warm + -(-n_images // bs)))
    for k, (_, done_ok, _) in enumerate(computer.map(batches)):  # a forward pass's images at a time
        if k == warm - 1:
            cpu0, t0, done = _cpu_seconds(), common.now(), 0
        elif k >= warm:
            done += len(done_ok)
    return {"images": done, "seconds": common.now() - t0, "cpu": _cpu_seconds() - cpu0, "settings": desc}


def child_extract(root: Path, out: Path, precision: str) -> dict:
    """``extract_codes`` with its defaults but ``precision``; the time inside the call, and to its first batch."""
    from cnncodes import pipeline
    pipeline.process_settings()
    from cnncodes.extract import extract_codes, writer

    marks, write_parts = {}, writer.write_parts

    def timed_parts(batches, *args, **kwargs):
        def first_marked():
            for batch in batches:
                marks.setdefault("first_batch", common.now())
                yield batch
        return write_parts(first_marked(), *args, **kwargs)

    writer.write_parts = timed_parts
    cpu0, dec0, main0, t0 = _cpu_seconds(), _decoders_cpu(), time.thread_time(), common.now()
    result = extract_codes(root, out, backbone="mobilenet_v2", layers=("penultimate",), overwrite=True,
                           progress=False, precision=precision)
    seconds, main_thread = common.now() - t0, time.thread_time() - main0
    out.unlink()
    return {"images": result.n_extracted, "seconds": seconds, "cpu": _cpu_seconds() - cpu0,
            "decoders_cpu": _decoders_cpu() - dec0, "main_thread_cpu": main_thread,
            "to_first_batch": marks["first_batch"] - t0, "runtime": result.runtime}


# ============================================================================ parent
def precisions() -> list[str]:
    """fp32, and bf16 where this CPU has it natively (as extract decides it)."""
    from cnncodes.extract.device import native_bf16

    return ["fp32", "bf16"] if native_bf16() else ["fp32"]


def measure(root: Path, rounds: int, tmp: Path, precision_list: list[str]) -> dict:
    """{(side, precision): [child results]}, sides alternating ABC then CBA; decoding is the same for every
    precision, so it is measured once a round."""
    os.environ["CNNCODES_CACHE_DIR"] = str(tmp / "openvino")  # converted models, filled by the untimed runs
    for precision in precision_list:
        common.run_child(SCRIPT, ["extract", str(root), str(tmp / "prime.h5"), precision])
    names = [("decode", "-")] + [(side, p) for p in precision_list for side in ("model", "extract")]
    n_images = None
    out: dict[tuple[str, str], list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for side, precision in common.order_for(r, names):
            started = common.now()
            if side == "decode":
                res = common.run_child(SCRIPT, ["decode", str(root)])
                n_images = n_images or res["images"]
            elif side == "model":
                res = common.run_child(SCRIPT, ["model", precision, str(n_images or 2000)])
            else:
                res = common.run_child(SCRIPT, ["extract", str(root), str(tmp / "out.h5"), precision])
            res["process_seconds"] = common.now() - started
            out[(side, precision)].append(res)
            print(f"  round {r + 1}/{rounds}  {side:7s} {precision:4s} {res['images'] / res['seconds']:7.1f} images/s "
                  f"({res['images']} images, {res['seconds']:.2f} s, CPU {1000 * res['cpu'] / res['images']:.2f} "
                  f"ms an image, whole process {res['process_seconds']:.1f} s; {common.load_average()})", flush=True)
    return out


def bound(decode: float, model: float) -> float:
    """Images/s of a pipeline whose two stages share the same cores: their times per image add up."""
    return 1.0 / (1.0 / decode + 1.0 / model)


def report(out: dict, precision_list: list[str]) -> None:
    def rates(side, precision):
        return [r["images"] / r["seconds"] for r in out[(side, precision)]]

    def cpu_ms(side, precision):
        return statistics.median(1000 * r["cpu"] / r["images"] for r in out[(side, precision)])

    decode = rates("decode", "-")
    print(f"\n  decode alone   {statistics.median(decode):7.1f} images/s  (rounds: "
          f"{' '.join(f'{v:.1f}' for v in decode)}; {out[('decode', '-')][0]['workers']} decoders, batch "
          f"{out[('decode', '-')][0]['batch']}; CPU {cpu_ms('decode', '-'):.2f} ms an image)")
    for precision in precision_list:
        model, extract = rates("model", precision), rates("extract", precision)
        bounds = [bound(d, m) for d, m in zip(decode, model)]
        fractions = [e / b for e, b in zip(extract, bounds)]
        first = statistics.median(r["to_first_batch"] for r in out[("extract", precision)])
        whole = statistics.median(r["process_seconds"] for r in out[("extract", precision)])
        frac = statistics.median(fractions)
        ext = out[("extract", precision)]
        dec_ms = statistics.median(1000 * r["decoders_cpu"] / r["images"] for r in ext)
        main_ms = statistics.median(1000 * r["main_thread_cpu"] / r["images"] for r in ext)
        print(f"  {precision}: model alone {statistics.median(model):.1f} images/s (rounds: "
              f"{' '.join(f'{v:.1f}' for v in model)}; {out[('model', precision)][0]['settings']}; CPU "
              f"{cpu_ms('model', precision):.2f} ms an image)")
        print(f"        bound 1 / (1/decode + 1/model) {statistics.median(bounds):.1f} images/s; extract end to end "
              f"{statistics.median(extract):.1f} images/s (rounds: {' '.join(f'{v:.1f}' for v in extract)}; "
              f"CPU {cpu_ms('extract', precision):.2f} ms an image; first batch after {first:.2f} s; whole "
              f"process {whole:.1f} s)")
        print(f"        CPU an image: decode alone + model alone {cpu_ms('decode', '-') + cpu_ms('model', precision):.2f}"
              f" ms; extract {cpu_ms('extract', precision):.2f} ms: decoders {dec_ms:.2f}, main thread (Python, "
              f"start-up included) {main_ms:.2f}, other threads (OpenVINO) "
              f"{cpu_ms('extract', precision) - dec_ms - main_ms:.2f} ms")
        cpu_frac = (cpu_ms('decode', '-') + cpu_ms('model', precision)) / cpu_ms('extract', precision)
        print(f"        CPU bound (decode + model alone, over extract's CPU an image): {cpu_frac:.0%} (the same fraction "
              f"counted in CPU time, which other work on the machine sways less)")
        print(f"        end to end / bound: {frac:.0%} (rounds: {' '.join(f'{f:.0%}' for f in fractions)})   "
              f"(target >= {TARGET_BOUND:.0%}: {'ok' if frac >= TARGET_BOUND else 'BELOW TARGET'})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--repeat", type=int, default=5, help="use every image N times (symlinks; default 5: about "
                                                          "2,000 files from hymenoptera)")
    ap.add_argument("--precision", action="append", choices=("fp32", "bf16"),
                    help="measure only this precision (repeatable; default fp32, and bf16 where native)")
    ap.add_argument("--avx2-only", action="store_true",
                    help="run every child as on a CPU with AVX2 and no AVX-512 (common.AVX2_ONLY: the kernels of "
                         "OpenVINO, torch, MKL and NumPy capped at AVX2, no native bf16)")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return common.serve_child(args.child, {
            "decode": lambda root: child_decode(Path(root)),
            "model": lambda precision, n: child_model(precision, int(n)),
            "extract": lambda root, out, precision: child_extract(Path(root), Path(out), precision)})
    if args.avx2_only:
        common.emulate_avx2_only()
    root, desc = common.repeated(*common.standard_images(False), args.repeat)
    precision_list = args.precision or precisions()
    print(f"extract pipeline bound: MobileNetV2 penultimate codes, {args.rounds} alternating round(s); "
          f"{common.load_average()}")
    print(f"cpu: {common.cpu_line()}")
    print(common.code_line())
    print(f"images: {desc}")
    with tempfile.TemporaryDirectory(prefix="cnncodes-bound-") as tmp:
        out = measure(root, args.rounds, Path(tmp), precision_list)
    report(out, precision_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
