"""CSV/TSV manifests of images: rows ``path,label[,split]``, or a header naming its columns (relative paths are
taken from the manifest's folder)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import UsageError
from .folders import SPLIT_NAMES, is_image_name

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".txt")
# Header names a manifest's columns may have (case-insensitive); without a header: path,label[,split].
MANIFEST_COLUMNS = {"path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "img",
                             "image_path"),
                    "label": ("label", "class", "target", "category", "class_name"),
                    "split": ("split", "subset", "set")}
COLUMN_OPTIONS = {"path": "--path-column", "label": "--label-column", "split": "--split-column"}


def read_manifest(path: Path, given: dict[str, str]) -> list[tuple[str, str, str]]:
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


def refuse_columns(given: dict[str, str] | None, source: str) -> None:
    """Column options name a manifest's columns: given with anything else they are a usage error."""
    if given:
        raise UsageError(f"{', '.join(COLUMN_OPTIONS[role] for role in given)}: only a CSV manifest has columns, "
                         f"not {source}")


def _looks_like_header(row: list[str], folder: Path) -> bool:
    """A first row whose first cell is neither an image name nor an existing file is a header, not data."""
    first = row[0].strip()
    return not (is_image_name(os.path.basename(first)) or (folder / first).is_file())


def _expected_header() -> str:
    other = "; ".join(f"{name}: {'|'.join(a[1:])}" for name, a in MANIFEST_COLUMNS.items())
    return f"path,label[,split] (other names accepted: {other})"
