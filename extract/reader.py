"""List the images of a collection (images.py decodes them).

A collection is a folder tree ``root/CLASS/*`` or ``root/{train,val,test}/CLASS/*`` (files directly
under ``root`` are unlabeled; symlinked folders are followed, each real folder once), a CSV
manifest ``path,label[,split]`` whose relative paths are taken from the CSV's folder, a single
image file, or several image files and folders. Unreadable images become recorded failures, never
crashes.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import UsageError

SPLITS = ("train", "val", "test")
# Split folder (and manifest split) names, case-insensitive, and the canonical split stored in the file.
# valid/validation/dev are validation splits; classify evaluates on test, else on val.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())


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


MANIFEST_EXTENSIONS = (".csv", ".tsv", ".txt")


def list_images(source: str | os.PathLike | Sequence[str | os.PathLike], *, path_column: str | None = None,
                label_column: str | None = None, split_column: str | None = None) -> ImageList:
    """List a folder tree, a CSV manifest, an image file, or a list of image files and folders.

    A list becomes one collection rooted at the paths' common folder: each folder in it is listed
    (and labelled) as it would be alone, image files given directly are unlabeled. ``*_column``
    name a manifest's header columns (see _read_manifest). Raises ValueError with a clear message
    when empty or malformed.
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
        _refuse_columns(given, "several paths")
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
    stat_files(listing)
    return listing


_COMMON = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def _list_one(source: Path, given: dict[str, str] | None = None) -> tuple[list[tuple[str, str, str]], list[str], Path]:
    """(entries, ignored, root) of one folder, manifest or image file; ``given``: manifest column names."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder, image or manifest")
    if source.is_dir():
        _refuse_columns(given, f"{source} (a folder)")
        entries, ignored = _walk_tree(source)
        return entries, ignored, source
    if source.suffix.lower() in MANIFEST_EXTENSIONS:
        return _read_manifest(source, given or {}), [], source.parent
    _refuse_columns(given, str(source))
    if _is_image_file(source):
        return [(source.name, "", "")], [], source.parent
    raise UsageError(f"{source} is neither an image Pillow reads nor a CSV manifest "
                     f"({', '.join(MANIFEST_EXTENSIONS)})")


def _is_image_file(path: Path) -> bool:
    """An image by its extension (a broken one becomes a recorded failure), else by its content."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
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


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_tree(root: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    split_mode = _has_split_folders(root)
    entries, ignored = [], []
    for dirpath, filenames in _walk(root):
        rel_dir = Path(dirpath).relative_to(root).parts
        for name in filenames:
            rel = "/".join((*rel_dir, name))
            if not _is_image_name(name):
                ignored.append(rel)
                continue
            split, label = _split_and_label(rel_dir, split_mode)
            entries.append((rel, label, split))
    return entries, ignored


def _walk(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) under ``root``, sorted, hidden folders skipped. Symlinked folders are followed,
    as the split check follows them, but each real folder (device, inode) is entered once: a link loop ends,
    and a folder linked twice is listed under its first name in sorted order."""
    seen = {_folder_id(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            folder = _folder_id(os.path.join(dirpath, name))
            if folder not in seen:
                seen.add(folder)
                kept.append(name)
        dirnames[:] = kept
        yield dirpath, filenames


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


# Header names a manifest's columns may have (case-insensitive); without a header: path,label[,split].
MANIFEST_COLUMNS = {"path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "img",
                             "image_path"),
                    "label": ("label", "class", "target", "category", "class_name"),
                    "split": ("split", "subset", "set")}


COLUMN_OPTIONS = {"path": "--path-column", "label": "--label-column", "split": "--split-column"}


def _read_manifest(path: Path, given: dict[str, str]) -> list[tuple[str, str, str]]:
    """Entries of a CSV (a .tsv: tab-separated) manifest, by header names when the first row has them.

    ``given`` maps roles (path, label, split) to header names; a header column that is neither given
    nor a known name is refused, so that a label column is never dropped as if the rows were unlabeled.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        rows = [(n, r) for n, r in enumerate(reader, start=1) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    columns = _header_columns(rows[0][1], given)
    if columns is not None or given or _looks_like_header(rows[0][1], path.parent):
        columns = _check_header(path, rows[0][1], columns, given)
        rows = rows[1:]
    entries = []
    for line, row in rows:
        if columns is None and not 2 <= len(row) <= 3:
            raise UsageError(f"{path}, row {line}: expected path,label[,split], got {len(row)} columns")
        cells = dict(zip(("path", "label", "split"), row)) if columns is None else {
            name: (row[i] if i < len(row) else "") for name, i in columns.items()}
        split = cells.get("split", "").strip()
        if split and split.lower() not in SPLIT_NAMES:
            raise UsageError(f"{path}, row {line}: split must be one of {', '.join(SPLIT_NAMES)} or empty, "
                             f"not {split!r}")
        entries.append((Path(cells["path"].strip()).as_posix(), cells.get("label", "").strip(),
                        SPLIT_NAMES[split.lower()] if split else ""))
    return entries


def _header_columns(row: list[str], given: dict[str, str]) -> dict[str, int] | None:
    """{"path": i, "label": j, "split": k} when ``row`` is a header naming a path column, else None.

    The names ``given`` take their columns first; the other roles take the first known name left."""
    cells = [c.strip().lower() for c in row]
    columns = {role: cells.index(name.strip().lower()) for role, name in given.items()
               if name.strip().lower() in cells}
    for role, aliases in MANIFEST_COLUMNS.items():
        found = [i for i, c in enumerate(cells) if c in aliases and i not in columns.values()]
        if role not in given and found:
            columns[role] = found[0]
    return columns if "path" in columns else None


def _check_header(path: Path, header: list[str], columns: dict[str, int] | None,
                  given: dict[str, str]) -> dict[str, int]:
    """The header's columns, or ValueError naming what is not understood: a given name that is not in
    the header, no path column, or (without ``given``) columns that are neither path, label nor split."""
    shown = ",".join(c.strip() for c in header)
    missing = [f"{COLUMN_OPTIONS[role]} {name}" for role, name in given.items()
               if name.strip().lower() not in (c.strip().lower() for c in header)]
    if missing:
        raise UsageError(f"{path}: {', '.join(missing)}: no such column in the first row ({shown})")
    if len({name.strip().lower() for name in given.values()}) < len(given):
        raise UsageError(f"{', '.join(f'{COLUMN_OPTIONS[r]} {n}' for r, n in given.items())}: one column cannot "
                         "play two roles")
    if columns is None:
        raise UsageError(f"{path}: the first row ({shown}) looks like a header, but names no known path column; "
                         f"expected the header {_expected_header()}, or rows path,label[,split] without one, or "
                         f"name yours with {', '.join(COLUMN_OPTIONS.values())}")
    unknown = [c.strip() for i, c in enumerate(header) if c.strip() and i not in columns.values()]
    if unknown and not given:
        understood = ", ".join(f"{role} = {header[i].strip()}" for role, i in columns.items())
        raise UsageError(f"{path}: column(s) {', '.join(unknown)} not understood (understood: {understood}); "
                         f"say which is which with {', '.join(COLUMN_OPTIONS.values())} (columns not named "
                         f"then are ignored), or rename them: {_expected_header()}")
    return columns


def _refuse_columns(given: dict[str, str] | None, source: str) -> None:
    """Column options name a manifest's columns: given with anything else they are a usage error."""
    if given:
        raise UsageError(f"{', '.join(COLUMN_OPTIONS[role] for role in given)}: only a CSV manifest has columns, "
                         f"not {source}")


def _looks_like_header(row: list[str], folder: Path) -> bool:
    """A first row whose first cell is neither an image name nor an existing file is a header, not data."""
    first = row[0].strip()
    return not (_is_image_name(os.path.basename(first)) or (folder / first).is_file())


def _expected_header() -> str:
    other = "; ".join(f"{name}: {'|'.join(a[1:])}" for name, a in MANIFEST_COLUMNS.items())
    return f"path,label[,split] (other names accepted: {other})"


def stat_files(listing: ImageList) -> None:
    """Record each file's size and mtime (-1 when it cannot be stat'ed) to detect later changes."""
    sizes, mtimes = [], []
    for rel in listing.paths:
        try:
            st = os.stat(listing.root / rel)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    listing.file_size = np.array(sizes, dtype=np.int64)
    listing.file_mtime_ns = np.array(mtimes, dtype=np.int64)
