"""Folder trees of images: ``root/CLASS/*`` or ``root/{train,val,test}/CLASS/*`` (split-name aliases), symlinked
folders followed, each real folder once."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from PIL import Image

from .errors import UsageError

# Split folder (and manifest split) names, case-insensitive, and the canonical split stored in the file.
# valid/validation/dev are validation splits; classify evaluates on test, else on val.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


def is_image_name(name: str) -> bool:
    """An image by its name: a Pillow extension, not hidden."""
    return not name.startswith(".") and is_image_extension(os.path.splitext(name)[1])


def is_image_extension(ext: str) -> bool:
    """Whether ``ext`` (any case) is one of ``Image.registered_extensions()``, loading Pillow's other plugins only
    where needed: those of its common formats (``Image.preinit``) register most extensions; every plugin is imported
    (``Image.init``) only for an extension they do not know. The main process lists the images before the decoders
    start, and they need no other plugin for the common formats (images.open_image)."""
    ext = ext.lower()
    Image.preinit()
    if ext not in Image.EXTENSION:
        Image.init()
    return ext in Image.EXTENSION


def walk_tree(root: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(entries (path, label, split), ignored non-image names) of the folder tree under ``root``."""
    split_mode = _has_split_folders(root)
    entries, ignored = [], []
    for dirpath, filenames in _walk(root):
        rel_dir = Path(dirpath).relative_to(root).parts
        for name in filenames:
            rel = "/".join((*rel_dir, name))
            if not is_image_name(name):
                ignored.append(rel)
                continue
            split, label = _split_and_label(rel_dir, split_mode)
            entries.append((rel, label, split))
    return entries, ignored


def _walk(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) under ``root``, depth first in sorted order, hidden folders skipped (``os.walk``'s
    order, whose errors it ignores too). Symlinked folders are followed, as the split check follows them, but each
    real folder (device, inode) is entered once: a link loop ends, and a folder linked twice is listed under its
    first name in sorted order."""
    seen, pending = {_folder_id(root)}, [str(root)]
    while pending:
        dirpath = pending.pop()
        try:
            with os.scandir(dirpath) as entries:
                listed = [(entry.name, _is_folder(entry)) for entry in entries]
        except OSError:
            continue
        yield dirpath, [name for name, folder in listed if not folder]
        kept = []
        for name in sorted(name for name, folder in listed if folder and not name.startswith(".")):
            folder = _folder_id(os.path.join(dirpath, name))
            if folder not in seen:
                seen.add(folder)
                kept.append(os.path.join(dirpath, name))
        pending.extend(reversed(kept))


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder, or a link to one. A link named like an image is taken for one without
    following it: in trees of links (git-annex, DVC, a benchmark's repeated set) following each costs a stat a
    file, before the decoders can start."""
    if entry.is_dir(follow_symlinks=False):
        return True
    if not entry.is_symlink() or is_image_name(entry.name):
        return False
    try:
        return entry.is_dir()
    except OSError:
        return False


def _folder_id(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)  # follows links: a link and its target are one folder
    return st.st_dev, st.st_ino


def _has_split_folders(root: Path) -> bool:
    """True for ``root/{train,val,test}/CLASS`` (any names of SPLIT_NAMES); ValueError when split folders
    sit beside class folders, which would silently turn "train" or "valid" into classes."""
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    splits = [d for d in subdirs if d.lower() in SPLIT_NAMES]
    if not splits:
        return False
    others = [d for d in subdirs if d.lower() not in SPLIT_NAMES]
    if others:
        raise UsageError(f"{root}: the folders {', '.join(splits)} look like splits but {', '.join(others[:5])}"
                         f"{' ...' if len(others) > 5 else ''} do not; use root/CLASS/* or root/SPLIT/CLASS/* "
                         f"(SPLIT: {', '.join(SPLIT_NAMES)}), not both")
    return True


def _split_and_label(rel_dir: tuple[str, ...], split_mode: bool) -> tuple[str, str]:
    if split_mode:
        if not rel_dir:  # a file beside the split folders: no split, no label
            return "", ""
        return SPLIT_NAMES[rel_dir[0].lower()], (rel_dir[1] if len(rel_dir) > 1 else "")
    return "", (rel_dir[0] if rel_dir else "")
