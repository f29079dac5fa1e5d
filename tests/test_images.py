"""Decoding and preprocessing: every corpus file either loads correctly or fails with a reason."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms

from cnncodes.extract.images import ImageError, load_image, load_rgb, preprocess, to_rgb
from bad_corpus import EXIF_ROTATED, NO_PERMISSION, make_bad_corpus, picture
from conftest import ROOT

# Key words each bad file's reason must contain.
BAD_REASONS = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated JPEG",
    "text.jpg": "not an image",
    "error_page.jpg": "looks like HTML",
    "random_bytes.png": "cannot identify format",
    "corrupt_data.png": "corrupt PNG",
    "bomb.png": "decompression bomb",
    "bomb_100mpx.png": "10000x10000 = 100 Mpx",
    NO_PERMISSION: "permission denied",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_bad_corpus(folder)


def standard(img: Image.Image, resize: int, crop: int) -> torch.Tensor:
    """The reference torchvision pipeline."""
    t = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                            transforms.PILToTensor()])
    return t(img)


def test_corpus_is_a_real_mix(corpus):
    _, expected = corpus
    assert sum(expected.values()) >= 15 and len(expected) - sum(expected.values()) >= 8
    assert {n for n, ok in expected.items() if not ok} == set(BAD_REASONS)
    assert any(not n.isascii() for n in expected) and any(" " in n for n in expected)


def test_good_files_load(corpus):
    folder, expected = corpus
    for name in (n for n, ok in expected.items() if ok):
        img = load_rgb(folder / name, min_side=32)
        assert img.mode == "RGB" and min(img.size) >= 1, name
        x = load_image(folder / name, 40, 32)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8, name


def test_bad_files_raise_one_line_reason(corpus):
    folder, expected = corpus
    for name in (n for n, ok in expected.items() if not ok and n != NO_PERMISSION):
        with pytest.raises(ImageError) as info:
            load_image(folder / name, 40, 32)
        reason = str(info.value)
        assert "\n" not in reason and 0 < len(reason) <= 300, name
        assert BAD_REASONS[name] in reason, (name, reason)


def test_bombs_are_refused_without_decoding(corpus, monkeypatch):
    folder, _ = corpus
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    for name in ("bomb.png", "bomb_100mpx.png"):
        with pytest.raises(ImageError, match="decompression bomb"):
            load_rgb(folder / name)
    assert decoded == []


def test_pixel_limit_is_a_parameter(corpus):
    folder, _ = corpus
    with pytest.raises(ImageError, match=r"320x240 = 0 Mpx exceeds"):
        load_rgb(folder / "photo.jpg", max_pixels=50_000)
    assert load_rgb(folder / "photo.jpg", max_pixels=100_000).size == (320, 240)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_rgb(tmp_path)


def _load_as_nobody(paths: list[str], conn) -> None:
    """Child process: drop root to nobody, then try to load each path."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    results = []
    for path in paths:
        try:
            results.append(f"loaded {load_rgb(path).size}")
        except ImageError as e:
            results.append(f"ImageError: {e}")
        except BaseException as e:  # anything else is a bug; report it to the parent
            results.append(f"{type(e).__name__}: {e}")
    conn.send(results)


def test_permission_denied(corpus):
    folder, _ = corpus
    if os.geteuid() != 0:
        with pytest.raises(ImageError, match="permission denied"):
            load_rgb(folder / NO_PERMISSION)
        return
    # Root reads anything, so load from a forked child that drops to nobody. The folder must be
    # traversable (pytest's tmp dirs are not), so that only the file's mode 000 stops the child.
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        make_bad_corpus(Path(tmp))
        assert load_rgb(Path(tmp) / NO_PERMISSION).mode == "RGB"  # as root
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        paths = [os.path.join(tmp, name) for name in ("photo.jpg", NO_PERMISSION)]
        proc = ctx.Process(target=_load_as_nobody, args=(paths, child))
        proc.start()
        assert parent.poll(30), "child sent nothing"
        results = parent.recv()
        proc.join(10)
    assert proc.exitcode == 0
    assert results == ["loaded (320, 240)", "ImageError: permission denied"]


def test_file_handles_are_closed(corpus):
    folder, expected = corpus
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    load_rgb(folder / "photo.jpg")  # warm up lazy imports
    before = fds()
    for name in expected:
        try:
            load_image(folder / name, 40, 32)
        except ImageError:
            pass
    assert fds() == before


def test_sixteen_bit_is_scaled_not_clipped(corpus):
    folder, _ = corpus
    with Image.open(folder / "gray16.png") as img:
        assert img.mode.startswith("I")
    a = np.asarray(load_rgb(folder / "gray16.png"))
    assert a[0, 0].tolist() == [0, 0, 0] and a[-1, -1].tolist() == [255, 255, 255]
    assert abs(int(a[32, 0, 0]) - 128) <= 2  # the middle of the ramp is mid-grey
    assert (a == 255).mean() < 0.01


def test_alpha_is_composited_on_white(corpus):
    folder, _ = corpus
    rgba = np.asarray(load_rgb(folder / "rgba.png"))
    assert rgba[20, 10].tolist() == [255, 0, 0] and rgba[20, 50].tolist() == [255, 255, 255]
    la = np.asarray(load_rgb(folder / "la.png"))
    assert la[20, 50].tolist() == [255, 255, 255] and la[20, 10, 0] < 128  # grey of red
    gif = np.asarray(load_rgb(folder / "palette_transparent.gif"))
    assert gif[10, 5].tolist() == [255, 255, 255] and gif[10, 35].tolist() == [0, 255, 0]


def test_exif_rotation_applied_before_crop(corpus):
    folder, _ = corpus
    img = load_rgb(folder / EXIF_ROTATED)
    assert img.size == (80, 120)  # stored 120x80
    x = load_image(folder / EXIF_ROTATED, 64, 64).float()
    # Orientation 6 turns the stored left (red) half to the top.
    top, bottom = x[:, 4, :], x[:, -5, :]
    assert (top[0] > 200).all() and (top[2] < 60).all()
    assert (bottom[2] > 200).all() and (bottom[0] < 60).all()


def test_cmyk_becomes_plausible_rgb(corpus):
    folder, _ = corpus
    a = np.asarray(load_rgb(folder / "cmyk.jpg")).astype(int)
    cyan, yellow = a[16, 8], a[16, 56]
    assert cyan[0] < 40 and cyan[1] > 215 and cyan[2] > 215, cyan
    assert yellow[0] > 215 and yellow[1] > 215 and yellow[2] < 40, yellow


def test_animated_gif_gives_first_frame(corpus):
    folder, _ = corpus
    assert np.asarray(load_rgb(folder / "animated.gif"))[8, 8].tolist() == [255, 0, 0]


@pytest.mark.parametrize("name", ["tall.png", "photo.jpg", "palette.gif"])
def test_matches_standard_torchvision_pipeline(corpus, name):
    folder, _ = corpus
    with Image.open(folder / name) as img:
        reference = standard(img.convert("RGB"), 224, 200)
    # photo.jpg is 320x240: 240 // 224 == 1, so draft mode keeps full resolution. The crop region is
    # resized directly (same geometry and filter), so values agree to within rounding, not bit for bit.
    got = load_image(folder / name, 224, 200)
    diff = (got.int() - reference.int()).abs()
    assert got.shape == reference.shape and diff.float().mean() < 0.5 and diff.max() <= 3, (diff.float().mean(), diff.max())


def test_crop_larger_than_the_resized_image_pads_like_torchvision(corpus):
    folder, _ = corpus
    with Image.open(folder / "tall.png") as img:
        reference = standard(img.convert("RGB"), 64, 96)
    assert torch.equal(load_image(folder / "tall.png", 64, 96), reference)


@pytest.mark.parametrize("interpolation", ["bicubic", "nearest"])
def test_interpolation_is_passed_through(interpolation):
    img = picture((70, 50), 3)
    t = transforms.Compose([transforms.Resize(40, transforms.InterpolationMode(interpolation)),
                            transforms.CenterCrop(32), transforms.PILToTensor()])
    assert torch.equal(preprocess(img, 40, 32, interpolation), t(img))
    with pytest.raises(ValueError):
        preprocess(img, 40, 32, "lanczos-ish")


def test_tiny_images_and_crop_bigger_than_resize(corpus):
    folder, _ = corpus
    x = load_image(folder / "tiny_1x1.png", 8, 8)
    assert x.shape == (3, 8, 8) and (x[:, 3, 3] == torch.tensor([10, 200, 30])).all()
    img = picture((30, 20), 4)
    padded = preprocess(img, 16, 20)
    assert torch.equal(padded, standard(img, 16, 20))
    assert padded[:, 0].sum() == 0 and padded[:, :, 8].sum() > 0  # zero rows top, content in


def test_draft_decoding_is_close_to_full_decode(tmp_path):
    path = tmp_path / "large.jpg"
    picture((3000, 2000), 11).save(path, quality=90)
    img = load_rgb(path, min_side=256)
    assert img.size == (750, 500)  # decoded at 1/4: the shorter side stays >= 256
    with Image.open(path) as full:
        reference = standard(full.convert("RGB"), 256, 224).float()
    fast = load_image(path, 256, 224).float()
    assert fast.shape == reference.shape
    assert (fast - reference).abs().mean() < 1.0


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16B", [0, 65535], [0, 255]),
    ("I", [32768, 65535], [128, 255]),             # 16-bit data in a 32-bit mode
    ("I", [0, 200], [0, 200]),                     # 8-bit data in a 32-bit mode
    ("I", [-1000, 1000], [0, 255]),                # no known range: min-max
    ("F", [0.0, 0.5], [0, 128]),                   # [0, 1] floats
    ("F", [float("nan"), 1.0], [0, 255]),
])
def test_wide_modes_are_scaled(mode, values, expected):
    img = Image.new(mode, (2, 1))
    img.putpixel((0, 0), values[0])
    img.putpixel((1, 0), values[1])
    a = np.asarray(to_rgb(img))
    assert a.shape == (1, 2, 3) and a[0, :, 0].tolist() == expected


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "La", "PA", "RGBa", "CMYK", "YCbCr",
                                  "HSV", "I;16"])
def test_every_mode_converts_to_rgb(mode):
    out = to_rgb(Image.new(mode, (3, 2)))
    assert out.mode == "RGB" and out.size == (3, 2)


# In a fresh process (Pillow's plugins not loaded yet): decode each file named, saying after each whether every
# Pillow plugin is loaded by then, and what came out (the pixels, or the reason).
DECODE_PROBE = """
import json, sys
import numpy as np
from cnncodes.extract.images import DECODED, ImageError, formats, load_rgb

out = []
for path in sys.argv[1:]:
    try:
        pixels = np.asarray(load_rgb(path)).tolist()
    except ImageError as err:
        pixels = str(err)
    out.append([pixels, "PIL.TiffImagePlugin" in sys.modules])
from PIL import Image
Image.init()
print(json.dumps({"decoded": out, "formats": list(formats()), "expected": [f for f in DECODED if f in Image.OPEN]}))
"""


def test_common_formats_decode_without_every_plugin_and_the_others_as_before(tmp_path):
    """JPEG, PNG, GIF and BMP files decode in a process where Pillow's other plugins were never imported (the
    decoders, forked before the main process needs them); a TIFF then loads them and decodes; an EPS is still
    refused (it would run Ghostscript); the formats tried are the DECODED ones this Pillow has, as before."""
    files = []
    for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.gif", "GIF"), ("d.bmp", "BMP"), ("e.tif", "TIFF"),
                      ("f.eps", "EPS"), ("g.png", "TIFF")):  # g: a TIFF named .png
        picture((24, 16), len(files)).save(tmp_path / name, format=fmt)
        files.append(tmp_path / name)
    done = subprocess.run([sys.executable, "-c", DECODE_PROBE, *map(str, files)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert [loaded for _, loaded in probe["decoded"]] == [False] * 4 + [True] * 3
    for path, (pixels, _) in zip(files, probe["decoded"]):
        if path.suffix == ".eps":
            assert "not an image" in pixels
        else:
            with Image.open(path) as img:
                np.testing.assert_array_equal(np.array(pixels, dtype=np.uint8), np.asarray(img.convert("RGB")))
    assert probe["formats"] == probe["expected"] and "EPS" not in probe["formats"]
