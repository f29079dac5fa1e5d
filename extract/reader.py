"""List the images of a collection (images.py decodes them).

A collection is a folder tree ``root/CLASS/*`` or ``root/{train,val,test}/CLASS/*`` (files directly
under ``root`` are unlabeled; symlinked folders are followed, each real folder once), a CSV
manifest ``path,label[,split]`` whose relative paths are taken from the CSV's folder, a single
image file, or several image files and folders (folders.py walks the trees, manifest.py reads the CSV).
Unreadable images become recorded failures, never crashes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import UsageError
from .folders import is_image_extension, walk_tree
from .manifest import MANIFEST_EXTENSIONS, read_manifest, refuse_columns


@dataclass
class ImageList:
    """The images of a collection, in a fixed order, with labels, splits and file stats."""

    root: Path
    paths: list[str]  # POSIX paths relative to root
    labels: np.ndarray  # int64, -1 when unlabeled
    splits: list[str]
    class_names: list[str]
    file_size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    file_mtime_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignored: list[str] = field(default_factory=list)  # files skipped because they are not images by name

    def __len__(self) -> int:
        return len(self.paths)


def list_images(source: str | os.PathLike | Sequence[str | os.PathLike], *, path_column: str | None = None,
                label_column: str | None = None, split_column: str | None = None, stat: bool = True) -> ImageList:
    """List a folder tree, a CSV manifest, an image file, or a list of image files and folders.

    A list becomes one collection rooted at the paths' common folder: each folder in it is listed
    (and labelled) as it would be alone, image files given directly are unlabeled. ``*_column``
    name a manifest's header columns (see manifest.read_manifest). ``stat=False`` leaves the files' sizes and times
    to the caller's ``stat_files`` (extraction stats them once its decoders have started). Raises ValueError with
    a clear message when empty or malformed.
    """
    given = {role: name for role, name in (("path", path_column), ("label", label_column),
                                           ("split", split_column)) if name}
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
        entries, ignored, root = _list_one(source, given)
    elif len(source) == 1:
        source = Path(source[0])
        entries, ignored, root = _list_one(source, given)
    else:
        refuse_columns(given, "several paths")
        entries, ignored, root = _list_several([Path(s) for s in source])
        source = root
    if not entries:
        raise UsageError(f"{source}: no images found (looked for {', '.join(sorted(_COMMON))} and other formats Pillow reads)")
    entries.sort(key=lambda e: e[0])
    class_names = sorted({label for _, label, _ in entries if label})
    index = {name: i for i, name in enumerate(class_names)}
    listing = ImageList(
        root=root.resolve(),
        paths=[p for p, _, _ in entries],
        labels=np.array([index[label] if label else -1 for _, label, _ in entries], dtype=np.int64),
        splits=[s for _, _, s in entries],
        class_names=class_names,
        ignored=ignored,
    )
    if stat:
        stat_files(listing)
    return listing


_COMMON = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def _list_one(source: Path, given: dict[str, str] | None = None) -> tuple[list[tuple[str, str, str]], list[str], Path]:
    """(entries, ignored, root) of one folder, manifest or image file; ``given``: manifest column names."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder, image or manifest")
    if source.is_dir():
        refuse_columns(given, f"{source} (a folder)")
        entries, ignored = walk_tree(source)
        return entries, ignored, source
    if source.suffix.lower() in MANIFEST_EXTENSIONS:
        return read_manifest(source, given or {}), [], source.parent
    refuse_columns(given, str(source))
    if _is_image_file(source):
        return [(source.name, "", "")], [], source.parent
    raise UsageError(f"{source} is neither an image Pillow reads nor a CSV manifest "
                     f"({', '.join(MANIFEST_EXTENSIONS)})")


def _is_image_file(path: Path) -> bool:
    """An image by its extension (a broken one becomes a recorded failure), else by its content."""
    if is_image_extension(path.suffix):
        return True
    try:
        with Image.open(path):
            return True
    except Exception:  # Pillow raises several kinds for "not an image"
        return False


def _list_several(sources: list[Path]) -> tuple[list[tuple[str, str, str]], list[str], Path]:
    """Image files and folders as one collection under their common folder (duplicates listed once)."""
    manifests = [s for s in sources if s.is_file() and s.suffix.lower() in MANIFEST_EXTENSIONS]
    if manifests:
        raise UsageError(f"{manifests[0]} is a CSV manifest: give a manifest alone, not with other paths")
    listed = [(_list_one(s)) for s in sources]
    roots = [root.resolve() for _, _, root in listed]
    common = Path(os.path.commonpath(roots))
    entries: dict[str, tuple[str, str, str]] = {}
    ignored: list[str] = []
    for (items, skipped, _), root in zip(listed, roots):
        prefix = root.relative_to(common).parts
        for rel, label, split in items:
            path = "/".join((*prefix, rel))
            entries.setdefault(path, (path, label, split))
        ignored += ["/".join((*prefix, rel)) for rel in skipped]
    return list(entries.values()), ignored, common


def stat_files(listing: ImageList) -> None:
    """Record each file's size and mtime (-1 when it cannot be stat'ed) to detect later changes."""
    sizes, mtimes, root = [], [], str(listing.root)
    for rel in listing.paths:
        try:
            st = os.stat(os.path.join(root, rel))
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    listing.file_size = np.array(sizes, dtype=np.int64)
    listing.file_mtime_ns = np.array(mtimes, dtype=np.int64)
