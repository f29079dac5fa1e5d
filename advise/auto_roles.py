"""auto's image roles: the training and evaluation rows (finetune's split rule) and the selection folds of
the training rows, as the manifests every candidate reads.

Apart from advise.auto (the run) so that the roles read on their own.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

import numpy as np

from .selection import selection_folds


@dataclass
class Roles:
    """The images' roles: the manifests' text, and the training images (selection.csv's order) with their
    class indices and selection folds (-1: fits, never scored)."""

    images_csv: str
    selection_csv: str
    fingerprint: str
    class_names: list[str]
    train_paths: list[str]
    train_labels: np.ndarray
    folds: np.ndarray
    n_test: int
    split_source: str
    notes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    @property
    def class_index(self) -> dict[str, int]:
        """Each class name's index (``train_labels``' numbering)."""
        return {name: j for j, name in enumerate(self.class_names)}

    @property
    def fold_ids(self) -> list[int]:
        """The selection folds that score (0, 1, ...; one for a single share)."""
        return sorted(set(self.folds.tolist()) - {-1})

    @property
    def n_scored(self) -> int:
        return int((self.folds >= 0).sum())

    def fold_manifest(self, k: int, held_only: bool = False) -> str:
        """Fold ``k``'s manifest: train = the other folds' images, test = fold k's (``held_only``: those alone)."""
        rows = [(p, self.class_names[y], "test" if f == k else "train")
                for p, y, f in zip(self.train_paths, self.train_labels, self.folds) if f == k or not held_only]
        return csv_text(["path", "label", "split"], rows)


def image_roles(images, columns: dict, seed: int) -> Roles:
    """Training and evaluation rows by finetune's split rule (the one classify applies to the same column),
    and the selection folds of the training rows, as two manifests with absolute paths."""
    from cnncodes.classify.data import require_two_classes
    from cnncodes.extract.reader import list_images
    from cnncodes.finetune.data import choose_splits

    listing = list_images(images, **columns)
    require_two_classes(listing.labels, listing.class_names, str(images))
    splits = choose_splits(listing, listing.labels >= 0, 0.0, seed)
    labels = listing.labels[splits.train]
    folds = selection_folds(labels, seed)
    path = [(listing.root / p).as_posix() for p in listing.paths]
    names = listing.class_names

    def manifest(rows: list[tuple[int, str]]) -> str:
        return csv_text(["path", "label", "split"], [(path[i], names[listing.labels[i]], s) for i, s in rows])

    held = "val" if set(np.asarray(listing.splits)[splits.test]) == {"val"} else "test"  # its own name, in reports
    images_csv = manifest([(i, "train") for i in splits.train] + [(i, held) for i in splits.test])
    selection_csv = csv_text(["path", "label", "fold"], [(path[i], names[listing.labels[i]], f + 1 if f >= 0 else "")
                                                        for i, f in zip(splits.train, folds)])
    stamp = "".join(f"{p}\0{s}\0{m}\n" for p, s, m in zip(listing.paths, listing.file_size, listing.file_mtime_ns))
    notes = list(splits.notes) + ([f"{len(splits.val)} val image(s) beside the test split are not used"]
                                  if len(splits.val) else [])
    return Roles(images_csv, selection_csv, hashlib.sha256((images_csv + stamp).encode()).hexdigest(),
                 list(names), [path[i] for i in splits.train], labels, folds, len(splits.test), splits.split_source,
                 notes)


def csv_text(header: list[str], rows) -> str:
    """CSV text of a header and rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
