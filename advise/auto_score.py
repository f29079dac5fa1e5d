"""auto's scoring of one candidate by cross-fitting: fitted once per selection fold on the other folds, it
predicts the held-out fold; the out-of-fold predictions of the scored training images give its row.

A codes candidate runs classify's own fit (C by CV within the fit rows) per fold; a fine-tune runs finetune
per fold on the fold's manifest (RUN_DIR/folds/fold-K.csv), then predicts the held-out images with
finetune's predict. Each fold's run lies in candidates/NAME/fold-K/, the out-of-fold predictions in
candidates/NAME/oof.csv. A fine-tune's finished fold is kept (heldout-K.csv) and an unfinished one resumes
from its checkpoint, so a killed run loses at most one fold's unsaved epoch.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from cnncodes.classify.fileio import write_files

from .auto_plan import Candidate
from .auto_roles import csv_text
from .selection import append_log, out_of_fold

FINETUNE_BATCH = 32
ASSUMED_RATE = 20.0  # images/s decoded, for the estimates when no extraction ran (fine-tunes only); CPU-ish
LOG, STARTED = "leaderboard.jsonl", "started.json"


class Scoring:
    """The candidates' scoring, for advise.auto's run (which gives out, clock, log, roles, common, seed,
    epochs, started, done, rate and codes_file)."""

    def candidate(self, c: Candidate, i: int, n: int) -> dict:
        """Score ``c`` (or read its row back), or skip it when it does not fit in the time left."""
        if c.name in self.done:
            row = self.done[c.name]
            self.log(f"{i + 1}/{n} {c.name}: {row['score']:.3f} ± {row['se']:.3f} (finished by an earlier run)")
            return row
        spent = i and self.clock.left() <= 0  # the cheapest always runs: there is an answer
        plan = self._finetune_plan(c) if c.kind == "finetune" and not spent else {}
        if spent or (i and plan.get("skip")):
            why = plan.get("skip") or "the budget is spent"
            self.log(f"{i + 1}/{n} {c.name}: skipped ({why})")
            return {"candidate": c.name, "kind": c.kind, "cost": list(c.cost), "score": None, "se": None,
                    "seconds": None, "status": f"skipped: {why}"}
        started = time.monotonic()
        if c.kind == "finetune":
            self.started[c.name] = plan["epochs"]
            write_files(self.out, {STARTED: json.dumps(self.started, indent=2) + "\n"})  # a rerun keeps these
        predicted = np.full(self.roles.n_train, -1)
        codes = self._training_codes(c.layers) if c.kind == "codes" else None
        for k in self.roles.fold_ids:
            held = self.roles.folds == k
            predicted[held] = (self._codes_fold(c, k, codes) if c.kind == "codes" else
                               self._finetune_fold(c, k, plan["epochs"]))
        self._write_oof(c, predicted)
        scored = self.roles.folds >= 0
        row = {"candidate": c.name, "kind": c.kind, "cost": list(c.cost), "layers": list(c.layers),
               "classifier": c.classifier, "freeze": c.freeze, "epochs": plan.get("epochs"),
               **out_of_fold(self.roles.train_labels[scored], predicted[scored]),
               "folds": len(self.roles.fold_ids), "n_scored": int(scored.sum()), "refit_s": plan.get("refit_s"),
               "seconds": round(time.monotonic() - started, 1), "status": "done",
               "report_dir": (Path("candidates") / c.name).as_posix()}
        append_log(self.out / LOG, row)
        self.done[c.name] = row
        self.log(f"{i + 1}/{n} {c.name}: {row['score']:.3f} ± {row['se']:.3f} (out of fold), {row['seconds']:.1f} s")
        return row

    def _training_codes(self, layers: tuple[str, ...]) -> tuple:
        """The codes file read once for a candidate: (file, codes, each training image's row in it, whether that
        row has usable codes), in selection.csv's order."""
        from cnncodes.classify.data import load, valid_rows

        cf, X = load(self.codes_file(), list(layers))
        usable = valid_rows(cf, X)
        where = {p: i for i, p in enumerate(cf.rows.paths)}
        rows = np.array([where.get(p, -1) for p in self.roles.train_paths])
        return cf, X, rows, (rows >= 0) & usable[np.maximum(rows, 0)]

    def _codes_fold(self, c: Candidate, k: int, codes: tuple) -> np.ndarray:
        """classify's fit on the other folds' ``codes`` (_training_codes); its predictions (the run's class
        indices, -1 for an image without codes) for fold ``k``'s images, in selection.csv's order."""
        from cnncodes.classify.data import class_names_of
        from cnncodes.classify.model_io import load_model
        from cnncodes.classify.split import Dataset
        from cnncodes.classify.train import fit_and_report

        cf, X, rows, ok = codes
        fit, held = rows[ok & (self.roles.folds != k)], rows[ok & (self.roles.folds == k)]
        y, names = cf.rows.labels, class_names_of(cf)
        data = Dataset(X[fit], y[fit], X[held], y[held], names, list(c.layers), cf.recipe, str(cf.path), None,
                       f"auto's selection fold {k + 1} of {len(self.roles.fold_ids)} (seed {self.seed})",
                       int((~ok).sum()), 0)
        target = self.out / "candidates" / c.name / f"fold-{k + 1}"
        fit_and_report(data, target, classifier=c.classifier, normalize="power", C=None, class_weight="balanced",
                       sampling="none", seed=self.seed, cv=5)  # quiet: the candidate's line says it
        index = self.roles.class_index
        predicted = np.full(len(rows), -1)
        predicted[ok & (self.roles.folds == k)] = [index[names[j]] for j in
                                                   load_model(target)["pipeline"].predict(X[held])]
        return predicted[self.roles.folds == k]

    def _finetune_fold(self, c: Candidate, k: int, epochs: int) -> np.ndarray:
        """finetune on fold ``k``'s manifest (or its finished fold read back), then its predictions of the
        held-out images (class indices, -1 for an unreadable image), in selection.csv's order."""
        from cnncodes.finetune.predict import predict_images

        folds, target = self.out / "folds", self.out / "candidates" / c.name
        manifest, held, done = folds / f"fold-{k + 1}.csv", folds / f"held-{k + 1}.csv", target / f"heldout-{k + 1}.csv"
        if not done.is_file():
            write_files(folds, {manifest.name: self.roles.fold_manifest(k),
                                held.name: self.roles.fold_manifest(k, held_only=True)})
            finetune(manifest, target / f"fold-{k + 1}", c.freeze, epochs, self.seed, self.common)
            predict_images(target / f"fold-{k + 1}", held, done, device=self.common["device"],
                           precision=self.common["precision"], workers=self.common["workers"],
                           progress=self.common["progress"], overwrite=True)
        with open(done, newline="", encoding="utf-8") as fh:  # its paths are the manifest's: absolute, as train_paths
            said = {r["path"]: r["predicted"] for r in csv.DictReader(fh)}
        index = self.roles.class_index
        return np.array([index.get(said.get(p, ""), -1) for p, f in zip(self.roles.train_paths, self.roles.folds)
                         if f == k])

    def _write_oof(self, c: Candidate, predicted: np.ndarray) -> None:
        names, roles = self.roles.class_names, self.roles
        rows = [(p, names[y], f + 1, names[q] if q >= 0 else "")
                for p, y, f, q in zip(roles.train_paths, roles.train_labels, roles.folds, predicted) if f >= 0]
        write_files(self.out / "candidates" / c.name,
                    {"oof.csv": csv_text(["path", "label", "fold", "predicted"], rows)})

    def _finetune_plan(self, c: Candidate) -> dict:
        """The fine-tune's epochs (fixed, recorded by an earlier start, or sized from the time left) and its
        refit's estimate, or why it is skipped: its folds plus the winner's refit (its own, or a finished
        fine-tune's if longer: either may win) do not fit in the time left."""
        if c.name in self.started:
            return {"epochs": self.started[c.name]}
        from cnncodes.extract.backbones import get_backbone
        from cnncodes.extract.recipe import preprocess_config
        from cnncodes.finetune.budget import epochs_for, step_seconds

        bb = get_backbone(self.common["backbone"])
        crop = preprocess_config(bb, self.common["resize"], self.common["crop"])["crop"]
        per_step = step_seconds(self.common["backbone"], self.common["weights"], c.freeze, self.roles.n_classes,
                                FINETUNE_BATCH, crop, self.common["device"])
        fits, n_train, rate = len(self.roles.fold_ids), self.roles.n_train, self.rate or ASSUMED_RATE
        n_fit = n_train - self.roles.n_scored // fits  # each fold's fit rows
        decode = (fits * n_train + self.roles.n_scored) / rate  # each fold decodes train, then predicts its fold
        refit_decode = (n_train + self.roles.n_test) / rate
        reserved = max([r.get("refit_s") or 0 for r in self.done.values()], default=0)  # a finished one may win
        steps = fits + n_train / n_fit  # the folds' epochs and the refit's (more images), in fold epochs
        epochs = self.epochs or epochs_for(n_fit, FINETUNE_BATCH,
                                           (self.clock.left() - decode - max(refit_decode, reserved)) / steps,
                                           per_step)
        refit = refit_decode + epochs * math.ceil(n_train / FINETUNE_BATCH) * per_step
        need = decode + fits * epochs * math.ceil(n_fit / FINETUNE_BATCH) * per_step + max(refit, reserved)
        if not epochs or need > self.clock.left():  # epochs kept for the cheapest candidate, which always runs
            return {"epochs": max(epochs, 1), "skip": f"needs about {need:.0f} s for its {fits} folds and a refit, "
                                                      f"{max(self.clock.left(), 0):.0f} s left"}
        return {"epochs": epochs, "refit_s": round(refit, 1)}


def finetune(manifest: Path, target: Path, freeze: float, epochs: int, seed: int, common: dict) -> dict:
    """finetune_images on a manifest with train and test rows, no validation set (the last epoch is kept)."""
    from cnncodes.finetune import finetune_images

    return finetune_images(manifest, target, freeze=freeze, epochs=epochs, warmup_epochs=min(1.0, epochs / 6),
                           val_fraction=0, batch_size=FINETUNE_BATCH, seed=seed, **common)
