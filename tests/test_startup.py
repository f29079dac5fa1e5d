"""Start-up: a warm run (the converted model cached) imports neither torch nor torchvision, in the process that runs
the network nor in its decoders, and gives the codes of the cold run that converted the model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from conftest import FAST, ROOT, make_tree

from cnncodes.extract import open_codes
from cnncodes.extract.device import gpu_driver_present

HEAVY = ("torch", "torchvision")
AFTER_THE_DECODERS = ("h5py", "openvino", "tqdm")  # imported by a fresh extraction once its decoders run

# Runs the cnncodes command line given as its arguments, then writes the top-level packages loaded by the main
# process, and by every decode worker after each image it decoded, into $STARTUP_MODULES/<pid>.json.
WRAPPER = """
import json, os, sys

def loaded(tag):
    top = sorted({name.split(".")[0] for name in sys.modules} | ({"importlib.metadata"} & set(sys.modules)))
    with open(os.path.join(os.environ["STARTUP_MODULES"], f"{tag}-{os.getpid()}.json"), "w") as fh:
        json.dump(top, fh)

from cnncodes.extract import images

decode = images.ImageDataset.__getitem__

def recording(self, i):
    item = decode(self, i)
    loaded("worker")
    return item

images.ImageDataset.__getitem__ = recording
from cnncodes import pipeline
try:
    code = pipeline.main(sys.argv[1:])
finally:
    loaded("main")
sys.exit(code)
"""


def _cli(tmp_path: Path, args: list[str], record: Path) -> subprocess.CompletedProcess:
    """The command line in a fresh process; what it (and its decoders) loaded lands in ``record``."""
    record.mkdir(parents=True)
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER, encoding="utf-8")
    env = {**os.environ, "STARTUP_MODULES": str(record),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return done


def _loaded(record: Path) -> dict[str, set[str]]:
    return {path.stem: set(json.loads(path.read_text())) for path in record.glob("*.json")}


# --device cpu only where a GPU driver would make `auto` pick CUDA (and rightly load torch)
DEVICE = ["--device", "cpu"] if gpu_driver_present() else []


def test_a_warm_extract_and_predict_load_no_torch_and_give_the_cold_runs_codes(tmp_path, monkeypatch):
    """The cold run converts the model (torch loaded); the warm extract and predict run on the cached model with
    PIL + NumPy decoders and OpenVINO alone, and their codes are the cold run's. The warm extract's decoders were
    forked before h5py, OpenVINO and tqdm were imported; it never imports asyncio."""
    monkeypatch.setenv("CNNCODES_CACHE_DIR", str(tmp_path / "cache"))  # cold: nothing converted yet
    tree = make_tree(tmp_path / "images", per_class=6)
    options = [*FAST, *DEVICE, "--workers", "2"]
    _cli(tmp_path, ["run", str(tree), "--out", str(tmp_path / "run"), *options, "--classifiers", "svm"],
         tmp_path / "cold")
    cold = _loaded(tmp_path / "cold")
    assert set(HEAVY) <= cold[next(k for k in cold if k.startswith("main"))]  # the check sees torch where it is

    _cli(tmp_path, ["extract", str(tree), "-o", str(tmp_path / "warm.h5"), *options], tmp_path / "warm")
    one = tree / "cat" / "img_000.png"
    _cli(tmp_path, ["predict", str(tmp_path / "run" / "classify"), str(one), "-o", str(tmp_path / "p.csv"),
                    "--codes-out", str(tmp_path / "one.h5"), *DEVICE, "--workers", "2", "--quiet"],
         tmp_path / "predict")
    for record in ("warm", "predict"):
        loaded = _loaded(tmp_path / record)
        assert any(k.startswith("worker") for k in loaded) and any(k.startswith("main") for k in loaded), loaded
        assert all(not set(HEAVY) & modules for modules in loaded.values()), record
        assert all("openvino" in modules for name, modules in loaded.items() if name.startswith("main"))
    # a fresh job's decoders start before the main process loads what they do not need: its CPU before they run
    # is the one core's alone
    workers = [modules for name, modules in _loaded(tmp_path / "warm").items() if name.startswith("worker")]
    assert workers and not any(set(AFTER_THE_DECODERS) & modules for modules in workers)
    # nor does it load asyncio: its progress bar is tqdm's without that half (extract/progress.py); predict loads
    # it with joblib
    assert not any("asyncio" in modules for modules in _loaded(tmp_path / "warm").values())
    # nor importlib.metadata (the versions come from the dist-info folders' names: extract/versions.py)
    assert not any("importlib.metadata" in modules for modules in _loaded(tmp_path / "warm").values())
    # and a run without bars (--quiet) does not import tqdm at all
    assert not any("tqdm" in modules for modules in _loaded(tmp_path / "predict").values())

    cold_codes, warm_codes = open_codes(tmp_path / "run" / "codes.h5"), open_codes(tmp_path / "warm.h5")
    paths = list(cold_codes.rows.paths)
    assert list(warm_codes.rows.paths) == paths and warm_codes.recipe == cold_codes.recipe
    a, b = cold_codes.codes["penultimate"][:], warm_codes.codes["penultimate"][:]
    cosines = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    assert cosines.min() >= 0.9999, cosines.min()
    row = paths.index("cat/img_000.png")
    predicted = open_codes(tmp_path / "one.h5").codes["penultimate"][:]
    np.testing.assert_allclose(predicted[0], a[row], rtol=1e-4, atol=1e-6 * float(np.abs(a).max()))


def test_versions_come_from_the_dist_info_folders_name_else_from_importlib_metadata(tmp_path, monkeypatch):
    from cnncodes.extract.versions import installed_version, installed_versions

    site = tmp_path / "site"
    for name in ("onepkg", "twopkg"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("raise ImportError('never imported')\n", encoding="utf-8")
    (site / "onepkg-1.2.3+cpu.dist-info").mkdir()
    (site / "onepkg_extra-9.9.dist-info").mkdir()  # another distribution whose name starts alike
    for version in ("4.5.6", "4.5.7"):  # two: ambiguous, so importlib.metadata decides (its first on the path)
        (site / f"twopkg-{version}.dist-info").mkdir()
        (site / f"twopkg-{version}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: twopkg\nVersion: {version}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    from importlib import metadata

    assert installed_version("onepkg") == "1.2.3+cpu"
    assert installed_version("twopkg") == metadata.version("twopkg") in {"4.5.6", "4.5.7"}
    assert installed_version("no_such_package_here") is None
    assert installed_versions("onepkg", "no_such_package_here") == {"onepkg": "1.2.3+cpu"}
    for name in ("torch", "numpy", "h5py"):  # real wheels: the same as importlib.metadata says
        assert installed_version(name) == metadata.version(name)


def test_auto_picks_the_cpu_without_torch_where_no_gpu_driver_is_present(monkeypatch):
    code = ("import sys; from cnncodes.extract import device; device.GPU_DRIVER_FILES = (); "
            "print(device.choose_device('auto'), device.choose_device('cpu'), sorted(set(sys.modules) & {'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu", "cpu", "[]"]


def test_the_backbone_table_is_torchvisions():
    """backbones.py states each torchvision backbone's checkpoint and evaluation transform without importing
    torchvision: they are the weights enum's."""
    from cnncodes.extract.backbones import BACKBONES

    checked = 0
    for backbone in BACKBONES.values():
        if not backbone.weights_enum_name:
            continue
        weights = backbone.default_weights
        t = weights.transforms()
        assert backbone.checkpoint_url == weights.url
        assert backbone.eval_transform() == {"resize": t.resize_size[0], "crop": t.crop_size[0], "mean": list(t.mean),
                                             "std": list(t.std), "interpolation": t.interpolation.value}
        checked += 1
    assert checked == 5


@pytest.mark.parametrize("torch_home", [True, False])
def test_the_hub_folder_is_torchs_without_torch(monkeypatch, tmp_path, torch_home):
    if torch_home:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    else:
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    code = "import sys; from cnncodes.extract import weights; print(weights.hub_checkpoint_dir(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(Path(torch.hub.get_dir()) / "checkpoints"), "False"]


@pytest.mark.parametrize("size", [(80, 60), (60, 97), (72, 72)])
def test_views_are_torchvisions_pixels(size):
    """The NumPy views are torchvision's TenCrop and flip of the same resized image, pixel for pixel."""
    from cnncodes.extract.images import views_of

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    resized = TF.resize(img, 72, antialias=True)
    expected = torch.stack([TF.pil_to_tensor(v) for v in TF.ten_crop(resized, 64)]).numpy()
    np.testing.assert_array_equal(views_of(img, 72, 64, views=10), expected)
    center = TF.pil_to_tensor(TF.center_crop(resized, 64)).numpy()
    two = views_of(img, 72, 64, views=2)
    np.testing.assert_allclose(two[0], center, atol=3)  # the crop's region resized directly (test_images)
    np.testing.assert_array_equal(two[1], two[0][:, :, ::-1])


def test_the_command_line_makes_its_thread_settings_before_numpy_loads(tmp_path):
    """OpenMP and OpenBLAS read their settings when they load: the command line makes them first (sleeping OpenMP
    threads; OpenBLAS threads that stop spinning soon after a call, where importing NumPy makes one)."""
    code = """
import builtins, json, os, sys
seen, load = [], builtins.__import__

def watch(name, *args, **kwargs):
    if name.split(".")[0] == "numpy" and "numpy" not in sys.modules and not seen:
        seen.append({k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")})
    return load(name, *args, **kwargs)

builtins.__import__ = watch
from cnncodes import pipeline
code = pipeline.main(["extract", sys.argv[1], "-o", sys.argv[2]])
print(json.dumps([code, seen, "numpy" in sys.modules]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing"), str(tmp_path / "c.h5")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    code, seen, numpy_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code != 0 and numpy_loaded, done.stderr  # refused (no such folder) after loading NumPy
    assert seen == [{"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "20"}]
