"""Synthetic image collections for tests: good pictures and the bad files scraping produces."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, features

NO_PERMISSION = "no_permission.jpg"  # chmod 000; root can still read it, see tests
EXIF_ROTATED = "exif_rot6.jpg"       # stored wide (left red, right blue), displayed tall


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image with gradients and a few shapes, deterministic in `seed`."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.empty((h, w, 3), np.uint8)
    base[..., 0] = np.arange(w) * 255 // max(w - 1, 1)
    base[..., 1] = (np.arange(h) * 255 // max(h - 1, 1))[:, None]
    base[..., 2] = rng.integers(256)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return img


def make_good_images(folder: Path, n: int, size: tuple[int, int] = (64, 48), seed: int = 0,
                     ext: str = ".jpg") -> list[Path]:
    """Write n distinct good RGB images img_000<ext>... into folder; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:03d}{ext}" for i in range(n)]
    for i, path in enumerate(paths):
        picture(size, seed + i).save(path, **({"quality": 90} if ext == ".jpg" else {}))
    return paths


def make_bad_corpus(folder: Path) -> dict[str, bool]:
    """Write a realistic mix of good and bad files into folder; return {name: expected_ok}."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = _encode(picture((160, 120), 1), "JPEG", quality=90)
    files: dict[str, tuple[bytes, bool]] = {
        # good, ordinary
        "photo.jpg": (_encode(picture((320, 240), 2), "JPEG", quality=85), True),
        "tall.png": (_encode(picture((90, 150), 3), "PNG"), True),
        "small.jpg": (jpeg, True),
        "gray.jpg": (_encode(picture((64, 64), 4).convert("L"), "JPEG"), True),
        "image.bmp": (_encode(picture((40, 30), 5), "BMP"), True),
        "png_named.jpg": (_encode(picture((50, 40), 6), "PNG"), True),  # wrong extension
        "tiny_1x1.png": (_encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), True),
        "café_ß.jpg": (jpeg, True),
        "日本語.png": (_encode(picture((48, 48), 7), "PNG"), True),
        "name with spaces.jpg": (jpeg, True),
        # good, unusual modes
        "rgba.png": (_encode(_rgba(), "PNG"), True),
        "la.png": (_encode(_rgba().convert("LA"), "PNG"), True),
        "gray16.png": (_encode(_gray16(), "PNG"), True),
        "cmyk.jpg": (_encode(_cmyk(), "JPEG", quality=95), True),
        "palette.gif": (_encode(picture((60, 40), 8).convert("P"), "GIF"), True),
        "palette_transparent.gif": (_palette_transparent(), True),
        "animated.gif": (_animated(), True),
        "float32.tif": (_encode(_float(), "TIFF"), True),
        EXIF_ROTATED: (_exif_rotated(), True),
        # bad
        "empty.jpg": (b"", False),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], False),
        "text.jpg": (b"this is not an image\njust some text\n", False),
        "error_page.jpg": (b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", False),
        "random_bytes.png": (np.random.default_rng(9).bytes(3000), False),
        "corrupt_data.png": (_corrupt_png(), False),
        "bomb.png": (_png_header_only(40000, 40000), False),        # beyond Pillow's hard limit
        "bomb_100mpx.png": (_png_header_only(10000, 10000), False),  # beyond the 89 Mpx warning
        NO_PERMISSION: (jpeg, False),
    }
    if features.check("webp"):
        files["photo.webp"] = (_encode(picture((80, 60), 10), "WEBP"), True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    os.chmod(folder / NO_PERMISSION, 0)
    return {name: ok for name, (_, ok) in files.items()}


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgba() -> Image.Image:
    """Opaque red left half; fully transparent (black underneath) right half."""
    a = np.zeros((40, 60, 4), np.uint8)
    a[:, :30] = (255, 0, 0, 255)
    return Image.fromarray(a)


def _gray16() -> Image.Image:
    """A 16-bit ramp over the full 0..65535 range, 64x64."""
    return Image.fromarray(np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64))


def _cmyk() -> Image.Image:
    """Left half pure cyan, right half pure yellow."""
    img = Image.new("CMYK", (64, 32), (255, 0, 0, 0))
    img.paste((0, 0, 255, 0), (32, 0, 64, 32))
    return img


def _float() -> Image.Image:
    """A float image in [0, 1] (a common scientific TIFF)."""
    return Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32))


def _palette_transparent() -> bytes:
    """Palette GIF: index 0 transparent (left half), index 1 green (right half)."""
    img = Image.new("P", (40, 20), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (20, 0, 40, 20))
    return _encode(img, "GIF", transparency=0)


def _animated() -> bytes:
    """Two-frame GIF: red, then green."""
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    """120x80 stored (left red, right blue) with EXIF orientation 6: displays 80x120."""
    img = Image.new("RGB", (120, 80), (255, 0, 0))
    img.paste((0, 0, 255), (60, 0, 120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(w: int, h: int) -> bytes:
    """A ~60-byte PNG whose IHDR claims w x h (1-bit gray) with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _corrupt_png() -> bytes:
    """A valid PNG header and chunk structure whose compressed pixel data is garbage."""
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"\x78\x9c" + bytes(range(200))) + _png_chunk(b"IEND", b""))
