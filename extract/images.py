"""Robust image decoding and ImageNet-style preprocessing.

Scraped collections are full of broken files, so `load_rgb` turns every failure into an
`ImageError` whose message is one readable line; the reader records it and moves on.
JPEGs are decoded in draft mode (the decoder scales by 1/2, 1/4 or 1/8 while the shorter side
stays >= the resize target), which is much faster for large photos. ``ImageDataset`` serves the
decoded images to the decode workers. Decoding is PIL + NumPy alone, so that a warm extraction
never loads torch; ``preprocess`` and ``load_image`` give the same pixels as torch tensors.
"""
from __future__ import annotations

import functools
import os
import re
import warnings

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .codesfile import short
from .errors import UsageError
from .options import VIEWS

if TYPE_CHECKING:
    import torch

#: Images with more pixels than this are refused before decoding (Pillow's own default, ~89 Mpx).
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

# Raster formats we decode, in the order they are tried. Others are refused: EPS, for one, would run Ghostscript on
# the file. The first five are those of the plugins Pillow loads first (Image.preinit); see open_image.
DECODED = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "ICO",
           "JPEG2000", "PCX", "SGI", "PSD", "QOI")
Image.preinit()
_FIRST = tuple(f for f in DECODED[:5] if f in Image.OPEN)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(Exception):
    """An image that cannot be used; str() is a one-line human reason."""


def load_rgb(path: str | os.PathLike, min_side: int | None = None, *,
             max_pixels: int | None = None) -> Image.Image:
    """Decode `path` to an RGB image, EXIF orientation applied; raise ImageError on any failure.

    min_side: let JPEG decoding scale down while the shorter side stays >= min_side.
    max_pixels: refuse larger images without decoding them (default: module MAX_PIXELS; 0: no
    limit of ours, though Pillow still refuses anything over 2 * Image.MAX_IMAGE_PIXELS).
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    head, fmt = b"", None
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt-EXIF chatter; bombs are checked below
            head = f.read(64)
            if not head:
                raise ImageError("empty file (0 bytes)")
            img = open_image(f)
            fmt = img.format
            _check_size(*img.size, limit)
            if min_side and fmt in ("JPEG", "MPO"):
                img.draft("RGB", (min_side, min_side))
            img.load()  # first frame only for animations
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # a corrupt EXIF block must not cost us decodable pixels
                pass
            return to_rgb(img)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(_reason(e, fmt, head, limit)) from None


@functools.cache
def formats() -> tuple[str, ...]:
    """The formats of ``DECODED`` that this Pillow reads (every plugin loaded)."""
    Image.init()
    return tuple(f for f in DECODED if f in Image.OPEN)


def open_image(f) -> Image.Image:
    """``Image.open`` over ``formats()`` in their order, importing Pillow's other plugins only where needed: the
    first five formats' plugins are loaded already (``Image.preinit``), so a file that one of them takes opens
    without the others (``Image.init`` imports every plugin); any other file gets the call over every format, so
    the outcome is always that call's."""
    try:
        return Image.open(f, formats=_FIRST)
    except UnidentifiedImageError:
        return Image.open(f, formats=formats())


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha over white, 16-bit/float scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith(("I", "F")):
        img = Image.fromarray(_to_uint8(img))
    if img.mode == "La":
        img = img.convert("LA")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def crop_array(img: Image.Image, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """torchvision Resize(resize) + CenterCrop(crop) + PILToTensor, in PIL + NumPy: uint8 [3, crop, crop].

    The one decode rule of every path (extract, finetune, predict). The crop's source region is resized
    straight to ``crop`` x ``crop`` (same geometry and filter, faster than resizing the whole image first:
    bench/RESULTS.md; values agree to within a grey level); a crop larger than the resized image pads it with
    zeros, as torchvision does.
    """
    resample = pil_filter(interpolation)
    w, h = img.size
    rw, rh = resized_size(w, h, resize)
    if crop > rw or crop > rh:
        return center_crop(_resized(img, rw, rh, resample), crop)
    left, top = int(round((rw - crop) / 2.0)), int(round((rh - crop) / 2.0))
    sx, sy = w / rw, h / rh
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return _chw(img.resize((crop, crop), resample, box=box, reducing_gap=None))


def preprocess(img: Image.Image, resize: int, crop: int, interpolation: str = "bilinear") -> torch.Tensor:
    """``crop_array`` as a torch tensor (for torch callers: finetune, tests)."""
    import torch

    return torch.from_numpy(crop_array(img, resize, crop, interpolation))


# torchvision's InterpolationMode values and the PIL filters its PIL backend resizes with.
_PIL_FILTERS = {"nearest": Image.NEAREST, "nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR,
                "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def pil_filter(interpolation: str) -> int:
    """The PIL filter of a torchvision interpolation name; ValueError for an unknown one."""
    if interpolation not in _PIL_FILTERS:
        raise UsageError(f"interpolation must be one of {', '.join(_PIL_FILTERS)}, not {interpolation!r}")
    return _PIL_FILTERS[interpolation]


def resized_size(w: int, h: int, resize: int) -> tuple[int, int]:
    """torchvision Resize(int)'s output size: the shorter side becomes ``resize``."""
    return (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)


def _resized(img: Image.Image, rw: int, rh: int, resample: int) -> np.ndarray:
    return _chw(img if img.size == (rw, rh) else img.resize((rw, rh), resample))


def _chw(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def center_crop(chw: np.ndarray, crop: int) -> np.ndarray:
    """torchvision CenterCrop(crop) of a [3, H, W] array, zero-padded where the crop is larger."""
    _, h, w = chw.shape
    if crop > w or crop > h:
        pad_w, pad_h = max(crop - w, 0), max(crop - h, 0)
        chw = np.pad(chw, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)))
        _, h, w = chw.shape
    return _cut(chw, int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0)), crop)


def _cut(chw: np.ndarray, top: int, left: int, crop: int) -> np.ndarray:
    return np.ascontiguousarray(chw[:, top:top + crop, left:left + crop])


#: ``--views``: 1 = the center crop; 2 = it and its horizontal flip; 10 = torchvision's TenCrop (the four
#: corner crops and the center crop of the resized image, and their flips: Caffe's oversample).


def views_of(img: Image.Image, resize: int, crop: int, interpolation: str = "bilinear",
             views: int = 1) -> np.ndarray:
    """The ``views`` crops of one decoded image whose codes are averaged: uint8 [views, 3, crop, crop].

    The one place views are decided; both decoding paths (batches.py) go through ``ImageDataset``, which calls it.
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {', '.join(map(str, VIEWS))}, not {views!r}")
    if views == 10:
        resized = _resized(img, *resized_size(*img.size, resize), pil_filter(interpolation))
        return np.stack([*_five_crops(resized, crop), *_five_crops(resized[:, :, ::-1], crop)])
    center = crop_array(img, resize, crop, interpolation)
    return np.stack([center, center[:, :, ::-1]][:views])


def _five_crops(chw: np.ndarray, crop: int) -> list[np.ndarray]:
    """torchvision five_crop: top-left, top-right, bottom-left, bottom-right, center."""
    _, h, w = chw.shape
    if crop > w or crop > h:
        raise ValueError(f"a {crop} x {crop} crop of a {w} x {h} image: TenCrop needs crop <= resize")
    return [_cut(chw, 0, 0, crop), _cut(chw, 0, w - crop, crop), _cut(chw, h - crop, 0, crop),
            _cut(chw, h - crop, w - crop, crop), center_crop(chw, crop)]


def load_image(path: str | os.PathLike, resize: int, crop: int, interpolation: str = "bilinear",
               *, max_pixels: int | None = None) -> torch.Tensor:
    """load_rgb + preprocess: the uint8 [3, crop, crop] tensor for one file, or ImageError."""
    return preprocess(load_rgb(path, min_side=resize, max_pixels=max_pixels),
                      resize, crop, interpolation)


def load_array(path: str | os.PathLike, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """load_rgb + crop_array: the uint8 [3, crop, crop] array for one file, or ImageError."""
    return crop_array(load_rgb(path, min_side=resize), resize, crop, interpolation)


def _to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit integer or float image to uint8 by its plausible full range."""
    a = np.nan_to_num(np.asarray(img, dtype=np.float32))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        top = 1.0
    elif lo >= 0 and hi <= 255:
        top = 255.0
    elif lo >= 0 and hi <= 65535:
        top = 65535.0  # 16-bit data held in mode "I" (older Pillow PNGs, TIFF)
    else:
        a, top = a - lo, max(hi - lo, 1e-12)
    return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)


def _check_size(w: int, h: int, limit: int | None) -> None:
    if limit and w * h > limit:
        raise ImageError(f"decompression bomb: {w}x{h} = {w * h / 1e6:.0f} Mpx "
                         f"exceeds the {limit / 1e6:.0f} Mpx limit")
    if w < 1 or h < 1:
        raise ImageError(f"empty image ({w}x{h} pixels)")


def _reason(e: BaseException, fmt: str | None, head: bytes, limit: int | None) -> str:
    """One line saying why a file failed."""
    msg = short(str(e), 200) or type(e).__name__
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(e, Image.DecompressionBombError):  # beyond Pillow's own hard limit
        m = re.search(r"\((\d+) pixels\)", msg)
        px = int(m.group(1)) if m else 0
        cap = min(limit or px, 2 * (Image.MAX_IMAGE_PIXELS or px))
        return f"decompression bomb: {px / 1e6:.0f} Mpx exceeds the {cap / 1e6:.0f} Mpx limit"
    if isinstance(e, UnidentifiedImageError):
        return "not an image (cannot identify format)" + _sniff(head)
    if isinstance(e, MemoryError):
        return "out of memory while decoding"
    if fmt is None and isinstance(e, OSError):
        return f"cannot read file: {msg}"
    if "truncated" in msg:
        return f"truncated {fmt}: {msg}"
    label = "corrupt" if isinstance(e, (OSError, SyntaxError)) else "cannot decode"
    return f"{label} {fmt or 'image'}: {type(e).__name__}: {msg}"


def _sniff(head: bytes) -> str:
    """A hint about what a non-image file is (scraped 'images' are often HTML error pages)."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return ", looks like HTML/XML"
    if head and all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return ", looks like text"
    return ""


class ImageDataset:
    """Decodes and preprocesses images to uint8 [3, crop, crop] arrays, or with ``views`` (extraction) to the
    image's views [views, 3, crop, crop] (``views_of``); failures come back as (zeros, False, reason). A map-style
    dataset: a DataLoader (finetune) turns the arrays into tensors."""

    def __init__(self, root: Path, paths: list[str], resize: int, crop: int, interpolation: str = "bilinear",
                 views: int | None = None):
        self.root, self.paths = root, paths
        self.resize, self.crop, self.interpolation, self.views = resize, crop, interpolation, views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, bool, str]:
        try:
            return self._load(self.root / self.paths[i]), True, ""
        except ImageError as err:
            reason = str(err)
        except Exception as err:  # a decoder bug must not take the worker down
            reason = f"unexpected {type(err).__name__}: {err}"
        shape = (3, self.crop, self.crop) if self.views is None else (self.views, 3, self.crop, self.crop)
        return np.zeros(shape, dtype=np.uint8), False, " ".join(reason.split())

    def _load(self, path: Path) -> np.ndarray:
        if self.views is None:
            return load_array(path, self.resize, self.crop, self.interpolation)
        img = load_rgb(path, min_side=self.resize)
        return views_of(img, self.resize, self.crop, self.interpolation, self.views)
