"""The plan step: what an existing codes file already holds, what changed, and which rows to run.

An existing output is reused only when its recipe matches (precision included): otherwise the
difference is named and nothing runs. With ``update``, new and modified images are run and the
other rows kept; without it, any change in the image set is refused with what changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import codesfile, parts
from .errors import ExtractionError
from .reader import ImageList


@dataclass
class Plan:
    """``job_rows``: rows of the listing to extract; ``kept``: new row -> row of the existing file (None: no
    file to keep rows from); ``notes``: what the summary should say."""

    job_rows: list[int]
    kept: dict[int, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.kept is not None and not self.job_rows and not self.notes


def plan_job(out: Path, listing: ImageList, recipe: dict, overwrite: bool, update: bool) -> Plan:
    """Decide what to extract into ``out`` for ``listing`` made with ``recipe``."""
    everything = list(range(len(listing)))
    if not out.exists() or overwrite:
        return Plan(everything)
    if not codesfile.is_complete(out):
        raise ExtractionError(f"{out} exists and is not a complete codes file; choose another name or pass --overwrite")
    import h5py

    with h5py.File(out, "r") as h5:
        old_meta = codesfile.read_meta(h5)
        old_rows = codesfile.read_rows(h5)
    old_recipe = {"precision": old_meta.get("precision"), **old_meta.get("recipe", {})}  # files before precision
    diff = codesfile.recipe_difference(recipe, old_recipe)
    if diff:
        raise codesfile.RecipeMismatch(
            f"{out} was made with another recipe:\n  " + "\n  ".join(diff)
            + "\nUse another output file, or --overwrite to replace it.")
    moved = _moved(old_meta, listing)
    if moved and not update:
        raise ExtractionError(f"{out} was made {moved}. Use --overwrite to redo it.")
    return _diff_image_sets(out, listing, old_rows, update)


def _moved(old_meta: dict, listing: ImageList) -> str:
    """How the image root or class names differ from the file's, in words ('' when they agree)."""
    said = []
    if old_meta.get("image_root") != str(listing.root):
        said.append(f"from {old_meta.get('image_root')}; the images are now in {listing.root}")
    if old_meta.get("class_names") != listing.class_names:
        said.append(f"with classes {old_meta.get('class_names')}; now they are {listing.class_names}")
    return ", and ".join(said)


def _diff_image_sets(out: Path, listing: ImageList, old: codesfile.Rows, update: bool) -> Plan:
    old_index = {p: i for i, p in enumerate(old.paths)}
    new_index = {p: i for i, p in enumerate(listing.paths)}
    added = [i for i, p in enumerate(listing.paths) if p not in old_index]
    removed = [p for p in old.paths if p not in new_index]
    modified = [i for i, p in enumerate(listing.paths) if p in old_index and (
        listing.file_size[i] != old.file_size[old_index[p]] or listing.file_mtime_ns[i] != old.file_mtime_ns[old_index[p]]
        or listing.splits[i] != old.split[old_index[p]] or listing.labels[i] != old.labels[old_index[p]])]
    if not (added or removed or modified):
        return Plan([], {})
    summary = f"{len(added)} new, {len(removed)} removed, {len(modified)} modified"
    if not update:
        example = (listing.paths[added[0]] if added else removed[0] if removed else listing.paths[modified[0]])
        raise ExtractionError(
            f"the images changed since {out} was made: {summary} (e.g. {example}).\n"
            f"Use --update to extract only what is new or modified, or --overwrite to redo everything.")
    redo = sorted(set(added) | set(modified))
    redo_set = set(redo)
    kept = {i: old_index[p] for i, p in enumerate(listing.paths) if i not in redo_set}
    return Plan(redo, kept, [f"update: {summary}"])


def ignored_note(listing: ImageList) -> list[str]:
    if not listing.ignored:
        return []
    shown = ", ".join(listing.ignored[:3]) + (", ..." if len(listing.ignored) > 3 else "")
    return [f"ignored {len(listing.ignored)} file(s) whose names are not images: {shown}"]


def fresh(out: Path, overwrite: bool, parts_dir: Path) -> bool:
    """Whether the job is certain to be every row with no part done yet (no file to reuse, no parts to
    resume): known before the network is built, so decoding can start at once."""
    return (overwrite or not out.exists()) and not parts.finished_parts(parts_dir)


def batches_of(plan: parts.PartPlan, todo: list[int], batch_size: int) -> list[list[int]]:
    """Index batches that never cross a part boundary, so a part's codes do not depend on resumes."""
    out = []
    for part in todo:
        rows = plan.rows(part)
        out.extend(list(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))
    return out
