"""Shared helpers of the benchmarks: data sets, child processes, timing summaries, quality checks.

Every timed run happens in a fresh child process (``python bench/<script>.py --child ...``), so
that the two sides never share thread pools, allocator state or environment variables (OpenMP
reads its settings once per process), and the parent only schedules rounds and compares. NumPy is
imported where it is used, so that a child makes cnncodes' process settings (``pipeline.process_settings``)
before OpenBLAS reads them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the real image sets: ../shared/datasets, or $CNNCODES_DATASETS (a worktree elsewhere)
DATASETS = Path(os.environ.get("CNNCODES_DATASETS", REPO.parent / "shared" / "datasets"))
HYMENOPTERA = DATASETS / "hymenoptera"
CACHE = Path(os.environ.get("CNNCODES_BENCH_CACHE", Path(os.environ.get("TMPDIR", "/tmp")) / "cnncodes-bench"))

if sys.path[0] != str(REPO):  # first, even where PYTHONPATH holds it: bench/finetune.py is no package
    sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------------------------- data
def natural_image(rng: np.random.Generator, width: int, height: int, tint: np.ndarray) -> np.ndarray:
    """A photo-like uint8 RGB array: smooth low-frequency fields, some texture and edges, a tint.

    Smooth content matters: JPEG files of noise are huge and slow to decode, real photos are not.
    """
    import numpy as np
    from PIL import Image

    out = np.zeros((height, width, 3), dtype=np.float32)
    for cells, weight in ((4, 0.55), (16, 0.3), (64, 0.15)):
        small = rng.random((max(2, cells * height // width), cells, 3), dtype=np.float32)
        field = Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        out += weight * np.asarray(field, dtype=np.float32)
    # a few hard-edged blobs (objects)
    yy, xx = np.ogrid[:height, :width]
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(min(width, height) // 12, min(width, height) // 3)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        out[mask] = 0.5 * out[mask] + 0.5 * rng.integers(0, 256, 3)
    out = out * (1 - 0.35) + 0.35 * tint * 255
    out += rng.normal(0, 4, (height, 1, 1)).astype(np.float32)  # faint banding, keeps it non-synthetic
    return np.clip(out, 0, 255).astype(np.uint8)


def make_jpeg_tree(root: Path, n: int, size: tuple[int, int], *, splits=("train", "val"), classes=("ants", "bees"),
                   quality: int = 90, seed: int = 0) -> Path:
    """``root/<split>/<class>/img_NNNN.jpg``: n photo-like JPEGs of ``size`` (cached: made once)."""
    import numpy as np
    from PIL import Image

    stamp = root / ".complete"
    if stamp.exists() and stamp.read_text() == f"{n} {size} {splits} {classes} {quality} {seed}":
        return root
    rng = np.random.default_rng(seed)
    tints = {c: rng.random(3).astype(np.float32) for c in classes}
    for i in range(n):
        split = splits[0] if len(splits) == 1 or i % 5 < 3 else splits[1]  # 60/40, like hymenoptera
        cls = classes[i % len(classes)]
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        w, h = size if rng.random() < 0.8 else (size[1], size[0])  # some portrait shots
        Image.fromarray(natural_image(rng, w, h, tints[cls])).save(folder / f"img_{i:05d}.jpg", quality=quality)
    stamp.write_text(f"{n} {size} {splits} {classes} {quality} {seed}")
    return root


def standard_images(quick: bool) -> tuple[Path, str]:
    """The hymenoptera images when present, else generated 500x375 JPEGs; returns (root, description)."""
    if HYMENOPTERA.is_dir() and not os.environ.get("CNNCODES_BENCH_SYNTHETIC"):
        return HYMENOPTERA, f"hymenoptera ({HYMENOPTERA})"
    n = 80 if quick else 400
    root = make_jpeg_tree(CACHE / f"photos-500x375-{n}", n, (500, 375))
    return root, f"{n} generated 500x375 JPEGs ({root})"


def repeated(root: Path, desc: str, times: int) -> tuple[Path, str]:
    """A tree with every image of ``root`` ``times`` times (symlinks ``kN_<name>`` in the same
    split/class folders), to measure throughput where start-up matters less; returns (root, description)."""
    if times <= 1:
        return root, desc
    out = CACHE / f"{root.parent.name}-{root.name}-x{times}"
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    stamp = out / ".complete"
    desc = f"{desc}, every image {times} times"
    if stamp.exists() and stamp.read_text() == f"{root} {len(files)}":
        return out, desc
    shutil.rmtree(out, ignore_errors=True)  # links to another tree, or an unfinished one
    for path in files:
        rel = path.relative_to(root)
        for k in range(times):
            link = out / rel.parent / f"k{k}_{rel.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(path.resolve())
    stamp.write_text(f"{root} {len(files)}")
    return out, desc


def large_images(quick: bool) -> tuple[Path, str]:
    """Generated 12-megapixel (4000x3000) JPEGs, one folder per class, no splits."""
    n = 8 if quick else 100  # start-up (0.4-1 s) is still a fifth of a run here; --repeat makes it weigh less
    root = make_jpeg_tree(CACHE / f"photos-4000x3000-{n}", n, (4000, 3000), splits=("all",), quality=92)
    return root / "all", f"{n} generated 4000x3000 JPEGs ({root / 'all'})"


def package_root(tree: str | Path) -> Path:
    """A folder whose ``cnncodes`` is ``tree`` (a source tree is the package itself: pyproject maps cnncodes to
    "."), to put first on a child's PYTHONPATH, so that it imports that tree's code, not the installed one."""
    tree = Path(tree).resolve()
    root = CACHE / "packages" / hashlib.sha256(str(tree).encode()).hexdigest()[:16]
    link = root / "cnncodes"
    if not link.is_symlink() or link.resolve() != tree:
        root.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(tree, target_is_directory=True)
    return root


sys.path.insert(0, str(package_root(REPO)))  # `import cnncodes` is this tree's code, whatever is installed


# ------------------------------------------------------------------------------------------ children
def run_child(script: Path, args: list[str], timeout: float = 3600, env: dict | None = None) -> dict:
    """Run ``script --child ...`` in a fresh interpreter (``env``: its environment); it prints one JSON
    line last on stdout."""
    cmd = [sys.executable, str(script), "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    """What a child prints as its last line."""
    print(json.dumps(result), flush=True)


def serve_child(child_args: list[str], children: dict) -> int:
    """Run the child named by ``child_args[0]`` with the remaining (string) arguments; emit its result."""
    kind, *rest = child_args
    if kind not in children:
        raise SystemExit(f"unknown child {kind}")
    emit(children[kind](*rest))
    return 0


# Children run as on a CPU with AVX2 and no AVX-512 (most desktops and laptops, AMD Zen 2/3): oneDNN's kernels (in
# OpenVINO and in torch), ATen's, MKL's and NumPy's dispatch capped at AVX2, and no native bf16 for cnncodes.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "CNNCODES_CPU_CAPABILITIES": "FP32,INT8"}


def emulate_avx2_only() -> None:
    """Make the children started from now on run as on an AVX2-only CPU (``AVX2_ONLY``; ``cpu_line`` says so)."""
    os.environ.update(AVX2_ONLY)


def cpu_line() -> str:
    """The CPU model, its core count and the flags that decide the fast paths (AVX2, AVX-512, bf16, AMX)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
    shown = " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)
    line = f"{model}, {os.cpu_count()} CPUs, flags: {shown}"
    if all(os.environ.get(k) == v for k, v in AVX2_ONLY.items()):
        line += "; children emulate an AVX2-only CPU: " + " ".join(f"{k}={v!r}" for k, v in AVX2_ONLY.items())
    return line


def code_line() -> str:
    """Which cnncodes the children import (this tree's, see package_root)."""
    import cnncodes

    return f"code: {Path(cnncodes.__file__).resolve().parent}"


def load_average() -> str:
    try:
        return "load average %.1f %.1f %.1f on %d CPUs" % (*os.getloadavg(), os.cpu_count() or 0)
    except OSError:
        return f"{os.cpu_count()} CPUs"


# ------------------------------------------------------------------------------------------- timing
class Rounds:
    """Throughputs of several contenders measured in alternating rounds; ratios are per round."""

    def __init__(self, names: list[str]):
        self.names = names
        self.rates: dict[str, list[float]] = {n: [] for n in names}

    def add(self, name: str, images: int, seconds: float) -> float:
        rate = images / seconds if seconds > 0 else float("nan")
        self.rates[name].append(rate)
        return rate

    def median(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of the per-round ratio a/b (robust to a machine whose load drifts)."""
        pairs = [x / y for x, y in zip(self.rates[a], self.rates[b])]
        return statistics.median(pairs)

    def spread(self, name: str) -> str:
        return " ".join(f"{v:.1f}" for v in self.rates[name])


def order_for(round_index: int, names: list[str]) -> list[str]:
    """ABAB... on even rounds, BABA... on odd ones, so drift does not favour whoever goes first."""
    return names if round_index % 2 == 0 else names[::-1]


# ------------------------------------------------------------------------------------------ quality
def match_by_path(paths_a, codes_a, paths_b, codes_b):
    import numpy as np

    index = {p: i for i, p in enumerate(paths_b)}
    common = [p for p in paths_a if p in index]
    ia = {p: i for i, p in enumerate(paths_a)}
    a = np.stack([codes_a[ia[p]] for p in common]) if common else np.zeros((0, codes_a.shape[1]))
    b = np.stack([codes_b[index[p]] for p in common]) if common else np.zeros((0, codes_b.shape[1]))
    return common, a, b


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = a[ok].astype(np.float64), b[ok].astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def svm_accuracy(paths, codes, train_prefix="train/", test_prefix="val/", seed: int = 0) -> float:
    """Held-out accuracy of a LinearSVC (L2-normalized codes, C=1) trained on train/, tested on val/."""
    import numpy as np
    from sklearn.svm import LinearSVC

    labels = np.array([p.split("/")[1] for p in paths])
    ok = np.isfinite(codes).all(1)
    x = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
    tr = np.array([p.startswith(train_prefix) for p in paths]) & ok
    te = np.array([p.startswith(test_prefix) for p in paths]) & ok
    clf = LinearSVC(C=1.0, max_iter=20000, random_state=seed).fit(x[tr], labels[tr])
    return float((clf.predict(x[te]) == labels[te]).mean() * 100)


def peak_rss_mib(who=None) -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF if who is None else who)
    return usage.ru_maxrss / 1024.0  # KiB on Linux


def now() -> float:
    return time.perf_counter()
