#!/usr/bin/env python
"""GPU throughput, ready for the first machine with a CUDA device: model alone with autocast, and end
to end with JPEG decoding on the CPU (DataLoader workers) against decoding on the GPU
(``torchvision.io.decode_jpeg(device='cuda')``), plus the product's own ``extract_codes(device='cuda')``.

    python bench/gpu_speed.py [IMAGES] [--backbone mobilenet_v2 --backbone resnet50] [--batch 256]

IMAGES is a folder of JPEGs (default: the hymenoptera set, else generated photos); ``--repeat`` uses
every image several times so that start-up weighs less. Without a CUDA device the script prints
one line and exits with status 2 (nothing is measured). Published anchors: timm MobileNetV2 about
10,800 img/s and ResNet-50 about 4,200 img/s model-only with AMP on an RTX 4090; nvJPEG about
7,800 img/s decode on an A100.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

EXIT_NO_GPU = 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ device helpers
def cuda_device(torch=None, environ=os.environ):
    """The CUDA device this process should use: ``LOCAL_RANK``'s (one process per GPU under torchrun,
    wrapping around when there are more ranks than GPUs), else ``cuda:0``; None without CUDA."""
    torch = torch or __import__("torch")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return None
    rank = int(environ.get("LOCAL_RANK", "0") or 0)
    return torch.device("cuda", rank % torch.cuda.device_count())


def autocast_dtype(torch=None):
    """bfloat16 where the GPU computes it natively (Ampere and later), else float16."""
    torch = torch or __import__("torch")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def refuse_without_gpu(torch=None) -> "object":
    """The device, or one line on stderr and SystemExit(2) when there is no CUDA device."""
    device = cuda_device(torch)
    if device is None:
        print("gpu_speed: no CUDA device (torch.cuda.is_available() is False): nothing measured", file=sys.stderr)
        raise SystemExit(EXIT_NO_GPU)
    return device


# ------------------------------------------------------------------------------------ measurements
def jpeg_paths(root: Path, repeat: int) -> list[Path]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"gpu_speed: no JPEG files under {root}")
    return paths * repeat


def build(name: str, device, channels_last: bool = True):
    import torch
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval().to(device)  # speed does not depend on weights
    return model.to(memory_format=torch.channels_last) if channels_last else model


def timed(fn, batches: int, warmup: int = 3) -> float:
    """Seconds for ``batches`` calls of ``fn`` after ``warmup`` calls, the GPU synchronized around them."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def model_only(name: str, device, batch: int, crop: int, dtype, batches: int) -> float:
    import torch

    model = build(name, device)
    x = torch.randn(batch, 3, crop, crop, device=device).to(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            model(x)
    return batch * batches / timed(step, batches)


class _CpuDecoded:
    """Dataset: read + decode on the CPU (a DataLoader worker), resize and crop there too (uint8)."""

    def __init__(self, paths, resize: int, crop: int):
        from torchvision.transforms import v2
        self.paths, self.tf = paths, v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
        return self.tf(decode_jpeg(read_file(str(self.paths[i])), mode=ImageReadMode.RGB))


def _normalize(x, device, dtype):
    import torch
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    return ((x.float() - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)


def end_to_end_cpu_decode(name, paths, device, batch, resize, crop, dtype, workers) -> float:
    import torch

    model = build(name, device)
    loader = torch.utils.data.DataLoader(_CpuDecoded(paths, resize, crop), batch_size=batch, num_workers=workers,
                                         pin_memory=True, persistent_workers=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for x in loader:
            model(_normalize(x.to(device, non_blocking=True), device, dtype))
    torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - t0)


def end_to_end_gpu_decode(name, paths, device, batch, resize, crop, dtype) -> float:
    """File bytes read on the CPU, batched ``decode_jpeg(device='cuda')`` (nvJPEG), resize and crop on the GPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import v2

    model = build(name, device)
    tf = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for s in range(0, len(paths), batch):
            data = [read_file(str(p)) for p in paths[s:s + batch]]
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            x = torch.stack([tf(im) for im in images])
            model(_normalize(x, device, dtype))
    torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - t0)


def product_extract(root: Path, device, batch: int) -> float:
    import tempfile

    from cnncodes.extract import extract_codes

    with tempfile.TemporaryDirectory(prefix="cnncodes-gpu-") as tmp:
        t0 = time.perf_counter()
        result = extract_codes(root, Path(tmp) / "codes.h5", device=str(device), batch_size=batch, progress=False)
        return result.n_images / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="?", help="folder of JPEGs (default: hymenoptera, else generated photos)")
    ap.add_argument("--backbone", action="append", help="torchvision model name, repeatable "
                    "(default: mobilenet_v2 and resnet50)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batches", type=int, default=50, help="timed batches of the model-only measurement")
    ap.add_argument("--repeat", type=int, default=5, help="use every image this many times end to end")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="CPU decoding workers")
    args = ap.parse_args(argv)
    import torch

    device = refuse_without_gpu(torch)  # before any data is prepared
    dtype = autocast_dtype(torch)
    root = Path(args.images) if args.images else common.standard_images(False)[0]
    paths = jpeg_paths(root, args.repeat)
    print(f"gpu speed on {torch.cuda.get_device_name(device)} ({device}); autocast {dtype}; torch {torch.__version__}; "
          f"{len(paths)} images from {root}; {common.load_average()}")
    for name in args.backbone or ["mobilenet_v2", "resnet50"]:
        print(f"  {name}: model only, batch {args.batch}, {args.crop}px, autocast: "
              f"{model_only(name, device, args.batch, args.crop, dtype, args.batches):,.0f} img/s")
        cpu = end_to_end_cpu_decode(name, paths, device, args.batch, args.resize, args.crop, dtype, args.workers)
        gpu = end_to_end_gpu_decode(name, paths, device, args.batch, args.resize, args.crop, dtype)
        print(f"  {name}: end to end, decode on the CPU ({args.workers} workers) {cpu:,.0f} img/s; "
              f"decode on the GPU (nvJPEG) {gpu:,.0f} img/s ({gpu / cpu:.2f}x)")
    print(f"  cnncodes extract --device {device} (mobilenet_v2 penultimate, its own reader): "
          f"{product_extract(root, device, args.batch):,.0f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
