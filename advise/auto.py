"""auto: the strongest classifier this tool gives an image set, with an honest estimate of how good it is.

Advise, then train the plausible candidates cheapest first within a time budget: codes classifiers (svm,
softmax on the top layer, the best earlier layer and both) and fine-tunes at the freeze the advice suggests,
then its neighbours. Every candidate is scored by one selection protocol on the training split only: cross-fitted
on the same folds, scored by its out-of-fold predictions (advise/selection.py, advise/auto_score.py); the
winner is refit on the whole training split and evaluated once on the evaluation
split (test, else val, else a stratified share carved as finetune carves it): that figure is the honest
estimate, and nothing is chosen by it.

RUN_DIR holds images.csv (every image with its role: train, or test / val = the evaluation split),
selection.csv (the training split, each image's selection fold 1-3; empty: fits only), folds/ (each
fold's manifest), advice/, codes.h5 (one extraction of every image), candidates/NAME/ (its fold runs and
out-of-fold predictions, oof.csv), leaderboard.jsonl (a line per finished candidate: a rerun skips it), leaderboard.csv,
report.txt, auto.json and winner/ (the refit winner with the usual report contract, for `cnncodes predict`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from cnncodes.classify.fileio import write_files
from cnncodes.extract.errors import UsageError
from cnncodes.extract.names import AUTO_RESULT, AUTO_WINNER, check_backbone
from cnncodes.extract.outputs import guards_output

from .auto_plan import DEFAULT_BUDGET, Candidate, Clock, parse_budget, parse_kinds, plan_candidates
from .auto_report import format_result, leaderboard_csv, ranked
from .auto_roles import Roles, image_roles
from .auto_score import LOG, STARTED, Scoring, finetune
from .selection import FOLDS, pick_winner, read_log

IMAGES, SELECTION, CODES, SETTINGS = "images.csv", "selection.csv", "codes.h5", "settings.json"
PROTOCOL = f"cross-fitted on {FOLDS} folds"  # in settings.json: a run folder of another protocol is refused


@guards_output("out_dir", images="images", resumes=lambda out: (out / SETTINGS).is_file())
def auto_images(images: str | os.PathLike, out_dir: str | os.PathLike, *, budget: str | float = DEFAULT_BUDGET,
                candidates: str = "codes,finetune", backbone: str = "mobilenet_v2", weights: str | None = None,
                resize: int | None = None, crop: int | None = None, device: str = "auto", precision: str = "auto",
                batch_size: int | None = None, workers: int | None = None, sample: int | None = None,
                epochs: int | None = None, seed: int = 0, progress: bool = True, overwrite: bool = False,
                path_column: str | None = None, label_column: str | None = None,
                split_column: str | None = None) -> dict:
    """Advise on ``images``, score the candidates within ``budget``, refit the winner into ``out_dir``/winner
    and evaluate it once; returns the result written to auto.json (leaderboard, winner, honest estimate).

    ``candidates``: the kinds to try ("codes", "finetune" or both); ``sample``: the advice's (default its own). ``epochs`` fixes the fine-tunes' epochs
    (default: sized from the budget by finetune.budget.epochs_for). A rerun of the same call resumes:
    finished candidates are read back from leaderboard.jsonl. Raises ValueError (UsageError) for unusable
    options or images before any long work.
    """
    clock, kinds = Clock(parse_budget(budget)), parse_kinds(candidates)
    _check_options(backbone, epochs=epochs, resize=resize, crop=crop, precision=precision, sample=sample)
    out, log = Path(out_dir), _logger(progress)
    columns = dict(path_column=path_column, label_column=label_column, split_column=split_column)
    roles = image_roles(images, columns, seed)
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.weights import locate_weights

    locate_weights(get_backbone(backbone), weights)  # a missing checkpoint fails now, not after the advice
    _start(out, roles, dict(backbone=backbone, weights=weights, resize=resize, crop=crop, seed=seed), overwrite)
    common = dict(backbone=backbone, weights=weights, resize=resize, crop=crop, device=device, precision=precision,
                  workers=workers, progress=progress)
    sampled = {} if sample is None else {"sample": sample}
    advice = _advice(images, out, log, seed=seed, batch_size=batch_size, **sampled, **common, **columns)
    run = _Run(out, clock, log, roles, advice, common, batch_size, seed, epochs, overwrite)
    plan = plan_candidates(advice, kinds)
    if "codes" in kinds:
        log(f"one extraction of all {roles.n_train + roles.n_test} images into {out / CODES}")
        run.codes_file()
    rows = [run.candidate(c, i, len(plan)) for i, c in enumerate(plan)]
    winner = pick_winner(rows, roles.train_labels[roles.folds >= 0])
    final = run.refit(winner, plan)
    result = _result(images, out, clock, advice, roles, rows, winner, final, budget)
    write_files(out, {AUTO_RESULT: json.dumps(result, indent=2) + "\n",
                      "leaderboard.csv": leaderboard_csv(rows, winner),
                      "report.txt": format_result(result) + "\n"})
    return result


def _check_options(backbone: str, sample: int | None, **finetune_options) -> None:
    """UsageError for a bad option before any work (before torch loads, but for --sample): the backbone,
    finetune's declared ranges, then the advice's --sample."""
    from cnncodes.finetune.options import check_options

    check_backbone(backbone)
    check_options({k: v for k, v in finetune_options.items() if v is not None})
    if sample is not None:
        from . import MIN_SAMPLE

        if not isinstance(sample, int) or sample < MIN_SAMPLE:
            raise UsageError(f"--sample must be a whole number of at least {MIN_SAMPLE}, not {sample!r}")


def _start(out: Path, roles: Roles, options: dict, overwrite: bool) -> None:
    """Refuse a RUN_DIR holding an auto run of other images or options (unless ``overwrite``, which clears
    it); write the manifests and the settings a rerun is compared with."""
    settings = {**options, "images": roles.fingerprint, "selection": PROTOCOL}
    saved = out / SETTINGS
    if overwrite:
        for name in ("candidates", "folds", AUTO_WINNER, "advice"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (LOG, STARTED, AUTO_RESULT, "leaderboard.csv", "report.txt"):
            (out / name).unlink(missing_ok=True)
    elif saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != settings:
        before = json.loads(saved.read_text(encoding="utf-8"))
        diff = ", ".join(k for k in settings if before.get(k) != settings[k])
        raise UsageError(f"{out} holds an auto run made with other {diff}; use another --out, the same options to "
                         "resume, or --overwrite to start again")
    write_files(out, {IMAGES: roles.images_csv, SELECTION: roles.selection_csv,
                      SETTINGS: json.dumps(settings, indent=2) + "\n"})


def _advice(images, out: Path, log, **options) -> dict:
    """The advice of an earlier run of this RUN_DIR, else a new one (kept in RUN_DIR/advice)."""
    saved = out / "advice" / "advice.json"
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    from . import advise_images

    advice = advise_images(images, out_dir=out / "advice", overwrite=True, **options)
    log(f"advice: scenario {advice['scenario']} ({advice['scenario_name']}), similarity {advice['similarity']:.3f}, "
        f"in {advice['seconds']:.1f} s")
    return advice


class _Run(Scoring):
    """The candidates' runs (auto_score.Scoring) and the winner's refit, all within one RUN_DIR and one clock."""

    def __init__(self, out: Path, clock: Clock, log, roles: Roles, advice: dict, common: dict, batch_size,
                 seed: int, epochs: int | None, overwrite: bool):
        self.out, self.clock, self.log, self.roles, self.advice = out, clock, log, roles, advice
        self.common, self.batch_size, self.seed, self.epochs = common, batch_size, seed, epochs
        self.overwrite = overwrite
        self.done, self.codes, self.rate = read_log(out / LOG), None, None
        self.started = json.loads((out / STARTED).read_text(encoding="utf-8")) if (out / STARTED).is_file() else {}

    def codes_file(self) -> Path:
        """RUN_DIR/codes.h5: every image, the top layer and the advice's best earlier layer, extracted once."""
        if self.codes is None:
            from cnncodes.extract import extract_codes

            from .evidence import TOP_LAYER

            early = self.advice["evidence"].get("best_early_layer")
            taps = (TOP_LAYER,) + ((early,) if early else ())
            result = extract_codes(self.out / IMAGES, self.out / CODES, layers=taps, batch_size=self.batch_size,
                                   overwrite=self.overwrite, **self.common)
            self.codes, self.rate = result.path, result.images_per_second or None
            self.overwrite = False  # once replaced, a second call reuses it
        return self.codes

    def refit(self, winner: dict | None, plan: list[Candidate]) -> dict | None:
        """The winner refit on the whole training split into RUN_DIR/winner, evaluated on the evaluation split."""
        if winner is None:
            return None
        c = next(c for c in plan if c.name == winner["candidate"])
        target = self.out / AUTO_WINNER
        saved = self.out / AUTO_RESULT
        previous = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        if (previous.get("winner") or {}).get("candidate") != c.name:
            shutil.rmtree(target, ignore_errors=True)  # another candidate's refit: this run's winner replaces it
        self.log(f"refitting the winner, {c.name}, on all {self.roles.n_train} training images")
        if c.kind == "codes":
            from cnncodes.classify import classify_codes

            return classify_codes(self.codes_file(), target, layers=list(c.layers), classifier=c.classifier,
                                  seed=self.seed, progress=self.common["progress"], overwrite=True)
        return finetune(self.out / IMAGES, target, c.freeze, winner["epochs"], self.seed, self.common)


def _result(images, out: Path, clock: Clock, advice: dict, roles: Roles, rows: list[dict], winner: dict | None,
            final: dict | None, budget) -> dict:
    estimate = None if final is None else {k: final[k] for k in ("balanced_accuracy", "macro_f1", "accuracy",
                                                                   "n_train", "n_test", "split_source")}
    return {
        "images": str(images), "run_dir": str(out), "budget": str(budget), "budget_s": clock.seconds,
        "seconds": round(clock.used(), 1),
        "advice": {k: advice[k] for k in ("scenario", "scenario_name", "similarity")}
        | {"best_early_layer": advice["evidence"].get("best_early_layer"), "file": "advice/advice.json"},
        "selection": _selection(roles, json.loads((out / SETTINGS).read_text(encoding="utf-8"))["seed"]),
        "evaluation": {"split_source": roles.split_source, "n_test": roles.n_test},
        "leaderboard": [_brief(r) for r in ranked(rows, winner)], "winner": None if winner is None else
        {**_brief(winner), "run_dir": (out / AUTO_WINNER).as_posix(), "estimate": estimate},
        "notes": roles.notes,
    }


def _selection(roles: Roles, seed: int) -> dict:
    """auto.json's account of the selection protocol."""
    folds = roles.fold_ids
    how = (f"{len(folds)}-fold cross-fitting: every training image predicted once by a fit on the other folds"
           if len(folds) > 1 else f"one stratified share of {roles.n_scored} training images, the rest fit")
    return {"metric": "balanced_accuracy", "protocol": how, "folds": len(folds), "seed": seed,
            "n_train": roles.n_train, "n_scored": roles.n_scored,
            "noise": "binomial standard error over the scored images (Laplace-smoothed recalls)",
            "rule": "the best of the cheapest kind, codes then fine-tunes, within one standard error of the paired "
                    "difference from the best"}


def _brief(row: dict) -> dict:
    """A leaderboard row without its per-image correctness (kept in leaderboard.jsonl)."""
    return {k: v for k, v in row.items() if k != "correct"}


def _logger(progress: bool):
    def log(message: str) -> None:
        if progress:
            print(f"[auto] {message}", file=sys.stderr, flush=True)
    return log
