"""auto's image roles: the training and evaluation rows (finetune's split rule) and the selection share of
the training rows, as the two manifests every candidate reads.

Apart from advise.auto (the run) so that the roles read on their own.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

import numpy as np

from .selection import selection_share


@dataclass
class Roles:
    """The images' roles: the manifests' text, the training labels and the selection share's size."""

    images_csv: str
    selection_csv: str
    fingerprint: str
    n_classes: int
    n_train: int
    n_selection: int
    n_test: int
    split_source: str
    notes: list[str]


def image_roles(images, columns: dict, seed: int) -> Roles:
    """Training and evaluation rows by finetune's split rule (the one classify applies to the same column),
    and the selection share of the training rows, as two manifests with absolute paths."""
    from cnncodes.classify.data import require_two_classes
    from cnncodes.extract.reader import list_images
    from cnncodes.finetune.data import choose_splits

    listing = list_images(images, **columns)
    require_two_classes(listing.labels, listing.class_names, str(images))
    splits = choose_splits(listing, listing.labels >= 0, 0.0, seed)
    chosen = selection_share(listing.labels[splits.train], seed)

    def manifest(rows: list[tuple[int, str]]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows([(listing.root / listing.paths[i]).as_posix(), listing.class_names[listing.labels[i]], s]
                         for i, s in rows)
        return buf.getvalue()

    held = "val" if set(np.asarray(listing.splits)[splits.test]) == {"val"} else "test"  # its own name, in reports
    images_csv = manifest([(i, "train") for i in splits.train] + [(i, held) for i in splits.test])
    selection_csv = manifest([(i, "test" if s else "train") for i, s in zip(splits.train, chosen)])
    stamp = "".join(f"{p}\0{s}\0{m}\n" for p, s, m in zip(listing.paths, listing.file_size, listing.file_mtime_ns))
    notes = list(splits.notes) + ([f"{len(splits.val)} val image(s) beside the test split are not used"]
                                  if len(splits.val) else [])
    return Roles(images_csv, selection_csv, hashlib.sha256((images_csv + stamp).encode()).hexdigest(),
                  len(listing.class_names), len(splits.train), int(chosen.sum()), len(splits.test),
                  splits.split_source, notes)
