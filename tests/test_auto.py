"""cnncodes auto: the step budget, the selection protocol, the leaderboard and report contract, the evaluation
split's role (flipped labels change nothing chosen), the budget, resuming, and bad input.

Tiny trees, an untrained MobileNetV2 at 32 px, one fine-tuning epoch: the figures mean nothing here, the
behaviour does.
"""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnncodes import pipeline
from cnncodes.advise import auto as auto_module, auto_plan, auto_report
from cnncodes.advise.auto import auto_images
from cnncodes.advise.auto_plan import parse_budget
from cnncodes.advise import selection
from cnncodes.advise.selection import append_log, noise, out_of_fold, pick_winner, read_log, selection_folds
from conftest import ROOT, make_tree
from cnncodes.finetune.budget import epochs_for

TINY = dict(weights="random", resize=36, crop=32, precision="fp32", sample=10, epochs=1, workers=0, progress=False)
TINY_CLI = ["--weights", "random", "--resize", "36", "--crop", "32", "--precision", "fp32", "--sample", "10",
            "--epochs", "1", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("auto") / "imgs", per_class=8, splits=("train", "test"))


@pytest.fixture(scope="module")
def full_run(tree, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "run"
    return out, auto_images(tree, out, budget="10m", **TINY)


def _chosen(result: dict) -> tuple[list, str]:
    """What the selection chose: every scored candidate's score and noise, and the winner."""
    board = [(r["candidate"], r["score"], r["se"], r["status"]) for r in result["leaderboard"]]
    return board, result["winner"]["candidate"]


# --- pure parts ------------------------------------------------------------------------------------------

def test_epochs_come_from_a_step_budget():
    assert epochs_for(300, 32, budget_s=10_000, seconds_per_step=0.1) == 30  # 10 steps an epoch, 300 steps wanted
    assert epochs_for(20_000, 32, budget_s=10_000_000, seconds_per_step=0.1) == 6  # large sets: 6 epochs at most
    assert epochs_for(20_000, 32, budget_s=600, seconds_per_step=0.5) == 1  # 625 steps an epoch: one fits
    assert epochs_for(20_000, 32, budget_s=100, seconds_per_step=0.5) == 0  # not one epoch: the caller skips it
    assert epochs_for(300, 32, budget_s=50, seconds_per_step=1.0) == 5  # fewer steps than wanted where time is short


def test_the_cheapest_kind_within_one_standard_error_wins():
    rows = [{"candidate": "cheap", "cost": [0, 0], "score": 0.90, "se": 0.02},
            {"candidate": "dear", "cost": [1, 0], "score": 0.91, "se": 0.02},
            {"candidate": "skipped", "cost": [1, 1], "score": None, "se": None}]
    assert pick_winner(rows)["candidate"] == "cheap"
    rows[1]["score"] = 0.95  # beyond the noise: the costlier one earns its place
    assert pick_winner(rows)["candidate"] == "dear"
    perfect = {"a": {"recall": 1.0, "support": 4}, "b": {"recall": 1.0, "support": 4}}
    assert 0 < noise(perfect) < noise({"a": {"recall": 1.0, "support": 2}, "b": {"recall": 1.0, "support": 2}})


def test_within_a_kind_the_best_score_wins_however_close():
    # clothing6's case: freeze 0.7 within noise of 0.33 out of fold, 1.5 points below it on val
    rows = [{"candidate": "codes", "cost": [0, 0], "score": 0.87, "se": 0.015},
            {"candidate": "finetune-0.7", "cost": [1, 0], "score": 0.915, "se": 0.012},
            {"candidate": "finetune-0.33", "cost": [1, 1], "score": 0.922, "se": 0.012}]
    assert pick_winner(rows)["candidate"] == "finetune-0.33"
    codes = [{"candidate": "svm", "cost": [0, 0], "score": 0.950, "se": 0.015},
             {"candidate": "softmax", "cost": [0, 1], "score": 0.955, "se": 0.015}]
    assert pick_winner(codes + rows[1:])["candidate"] == "softmax"  # codes within noise: their best, not the cheapest


def test_within_noise_is_judged_on_the_paired_difference_of_the_same_images():
    import numpy as np

    y = np.array([0] * 50 + [1] * 50)
    truth = y.copy()

    def row(name, cost, wrong):
        predicted = truth.copy()
        predicted[wrong] = 1 - predicted[wrong]
        return {"candidate": name, "cost": cost, **out_of_fold(y, predicted)}

    common = list(range(10)) + list(range(50, 60))  # both wrong on these: 0.80 at best
    cheap, dear = row("cheap", [0, 0], common + [10, 11, 60, 61]), row("dear", [1, 0], common)
    assert (cheap["score"], dear["score"]) == pytest.approx((0.76, 0.80)) and len(dear["correct"]) == 100
    # 4 points apart, within the best's own SE (0.041) but the two differ on only 4 images and agree on 96: the
    # paired SE (0.020) says the lead is not noise
    assert pick_winner([cheap, dear])["candidate"] == "cheap"  # judged on the best's own SE alone
    assert pick_winner([cheap, dear], y)["candidate"] == "dear"
    once = row("once", [0, 1], common + [10])  # one image worse than dear: within the paired noise, and cheaper
    assert pick_winner([once, dear], y)["candidate"] == "once"


@pytest.mark.parametrize("scenario, freezes", [(1, ["0.7", "0.33"]), (3, ["0.33", "0.7", "0"]), (4, ["0", "0.33"])])
def test_candidates_cheapest_first_then_the_advised_freeze_and_its_neighbours(scenario, freezes):
    advice = {"scenario": scenario, "evidence": {"best_early_layer": "block4"}}
    plan = auto_plan.plan_candidates(advice, ("codes", "finetune"))
    assert [c.name for c in plan[:6]] == [f"codes-{layers}-{clf}" for layers in
                                          ("penultimate", "block4", "block4+penultimate") for clf in ("svm", "softmax")]
    assert [c.name.removeprefix("finetune-") for c in plan[6:]] == freezes
    assert [c.name for c in sorted(plan, key=lambda c: c.cost)][:6] == [c.name for c in plan[:6]]
    none_early = auto_plan.plan_candidates({"scenario": 1, "evidence": {"best_early_layer": None}}, ("codes",))
    assert [c.name for c in none_early] == ["codes-penultimate-svm", "codes-penultimate-softmax"]


def test_selection_folds_hold_out_every_training_image_once_stratified_and_seeded(monkeypatch):
    import numpy as np

    labels = np.array([0] * 10 + [1] * 5)
    folds = selection_folds(labels, seed=0)
    assert sorted(set(folds)) == [0, 1, 2] and (folds == selection_folds(labels, seed=0)).all()
    assert all(set(labels[folds == k]) == {0, 1} for k in range(3))  # every class in every fold
    assert not (folds == selection_folds(labels, seed=1)).all()
    with pytest.raises(ValueError, match="at least 3 training images"):
        selection_folds(np.array([0, 0, 0, 1, 1]), seed=0)
    monkeypatch.setattr(selection, "CROSS_FIT_UP_TO", 10)  # a large training split: one scored share
    share = selection_folds(labels, seed=0)
    assert sorted(set(share)) == [-1, 0] and (share == 0).sum() == 3 and set(labels[share == 0]) == {0, 1}


def test_a_line_cut_short_by_a_kill_is_ignored_and_the_next_row_kept(tmp_path):
    log = tmp_path / "leaderboard.jsonl"
    append_log(log, {"candidate": "a", "score": 0.5})
    with open(log, "a") as fh:
        fh.write('{"candidate": "b", "sco')  # killed in the middle of a write
    append_log(log, {"candidate": "c", "score": 0.7})
    assert set(read_log(log)) == {"a", "c"}


def test_budget_parsing():
    assert parse_budget("15m") == 900 and parse_budget("1h30m") == 5400 and parse_budget("90") == 90
    for bad in ("soon", "0s", "-5m", ""):
        with pytest.raises(ValueError, match="--budget must be"):
            parse_budget(bad)


# --- the run ----------------------------------------------------------------------------------------------

def test_leaderboard_report_and_the_winners_run_contract(full_run, tree, tmp_path, capsys):
    out, result = full_run
    for name in ("leaderboard.csv", "leaderboard.jsonl", "report.txt", "auto.json", "advice/advice.json",
                 "codes.h5", "images.csv", "selection.csv"):
        assert (out / name).is_file(), name
    with open(out / "leaderboard.csv", newline="") as fh:
        board = list(csv.DictReader(fh))
    assert list(board[0]) == list(auto_report.LEADERBOARD_COLUMNS)
    names = {r["candidate"] for r in board}
    assert {"codes-penultimate-svm", "codes-penultimate-softmax"} <= names
    assert any(n.startswith("finetune-") for n in names)
    assert sum(r["winner"] == "yes" for r in board) == 1
    assert all(0 <= float(r["selection_score"]) <= 1 and 0 < float(r["noise_se"]) < 0.5 for r in board if r["rank"])
    report = (out / "report.txt").read_text()
    assert "| # | candidate | selection bal. acc. | ± noise (SE) | time (s) | status |" in report
    assert f"winner: {result['winner']['candidate']}" in report and "the honest estimate" in report
    assert json.loads((out / "auto.json").read_text()) == json.loads(json.dumps(result))
    folds = {r["path"]: int(r["fold"]) for r in csv.DictReader(open(out / "selection.csv"))}
    assert len(folds) == 16 and sorted(set(folds.values())) == [1, 2, 3]  # train/ only, three folds (fold-1..3/)
    assert result["selection"]["n_train"] == result["selection"]["n_scored"] == 16
    done = [r for r in result["leaderboard"] if r["status"] == "done"]  # a slow machine may skip costly ones
    assert {"codes-penultimate-svm", "codes-penultimate-softmax"} <= {r["candidate"] for r in done}
    for row in done:  # each score is its candidate's out-of-fold predictions of every image
        oof = list(csv.DictReader(open(out / row["report_dir"] / "oof.csv")))
        assert sorted(r["path"] for r in oof) == sorted(folds)  # every training image scored exactly once
        assert {r["path"]: int(r["fold"]) for r in oof} == folds  # on the same folds for every candidate
        assert all(r["predicted"] in ("cat", "dog") for r in oof)  # each prediction found its image (none unread)
        hits = {c: [r["predicted"] == c for r in oof if r["label"] == c] for c in ("cat", "dog")}
        assert row["score"] == pytest.approx(sum(sum(h) / len(h) for h in hits.values()) / 2)
        assert row["folds"] == 3 and "correct" not in row  # auto.json keeps the per-image correctness out
        fold_reports = [json.loads(p.read_text()) for p in sorted((out / row["report_dir"]).glob("fold-*/report.json"))]
        assert [r["n_test"] for r in fold_reports] == [list(folds.values()).count(k) for k in (1, 2, 3)]
        assert all(r["n_train"] + r["n_test"] == 16 for r in fold_reports)
    assert {r["candidate"] for r in result["leaderboard"]} == set(read_log(out / "leaderboard.jsonl"))
    for k in range(3):  # the fine-tunes' folds are the codes' folds: fold k's manifest holds out fold k's images
        rows = list(csv.DictReader(open(out / "folds" / f"fold-{k + 1}.csv")))
        assert len(rows) == 16 and {r["path"] for r in rows if r["split"] == "test"} == \
            {p for p, f in folds.items() if f == k + 1}
    winner = Path(result["winner"]["run_dir"])
    estimate = json.loads((winner / "report.json").read_text())
    assert estimate["n_train"] == 16 and estimate["n_test"] == 16  # refit on all of train/, evaluated on test/
    assert result["winner"]["estimate"]["balanced_accuracy"] == estimate["balanced_accuracy"]
    assert pipeline.main(["predict", str(winner), str(tree / "test"), "-o", str(tmp_path / "p.csv"), "--quiet"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 17
    run_dir = winner.parent  # the auto run folder stands for its winner
    assert pipeline.main(["predict", str(run_dir), str(tree / "test"), "-o", str(tmp_path / "q.csv"), "--quiet"]) == 0
    assert (tmp_path / "q.csv").read_text() == (tmp_path / "p.csv").read_text()


def test_selection_never_reads_the_evaluation_split(full_run, tree, tmp_path):
    flipped = shutil.copytree(tree, tmp_path / "flipped")
    (flipped / "test" / "cat").rename(flipped / "test" / "tmp")
    (flipped / "test" / "dog").rename(flipped / "test" / "cat")
    (flipped / "test" / "tmp").rename(flipped / "test" / "dog")  # every evaluation label is now wrong
    again = auto_images(flipped, tmp_path / "run", budget="10m", **TINY)
    assert _chosen(again) == _chosen(full_run[1])
    scored = [r["path"] for r in csv.DictReader(open(tmp_path / "run" / "selection.csv"))]
    assert len(scored) == 16 and all("/train/" in p for p in scored)
    for manifest in (tmp_path / "run" / "folds").glob("*.csv"):  # the fine-tunes' only images
        assert all("/train/" in r["path"] for r in csv.DictReader(open(manifest)))


def test_a_tiny_budget_runs_the_cheapest_candidate_and_skips_the_rest(tree, tmp_path):
    import cnncodes

    options = {**TINY, "quiet": True}
    del options["progress"]
    result = cnncodes.auto(tree, tmp_path / "run", budget="0.001s", **options)  # the Python API, CLI names
    board = result["leaderboard"]
    assert result["winner"]["candidate"] == "codes-penultimate-svm"  # the cheapest always runs: an answer
    assert [r["status"] for r in board if r["candidate"] != "codes-penultimate-svm"] == \
        ["skipped: the budget is spent"] * (len(board) - 1)
    assert sorted(p.name for p in (tmp_path / "run" / "candidates").iterdir()) == ["codes-penultimate-svm"]
    assert len(read_log(tmp_path / "run" / "leaderboard.jsonl")) == 1  # skipped ones run on a rerun with more time


def test_a_fine_tune_that_would_overrun_the_budget_is_skipped_before_it_starts(tree, tmp_path, monkeypatch):
    import cnncodes.finetune.budget
    from cnncodes import finetune
    monkeypatch.setattr(finetune.budget, "step_seconds", lambda *a, **k: 1000.0)  # a very slow machine
    result = auto_images(tree, tmp_path / "run", budget="10m", **TINY)
    tunes = [r for r in result["leaderboard"] if r["kind"] == "finetune"]
    assert tunes and all(r["status"].startswith("skipped: needs about") for r in tunes)
    assert not list((tmp_path / "run" / "candidates").glob("finetune-*"))
    assert result["winner"]["kind"] == "codes"


def test_a_fine_tune_that_would_leave_no_time_for_a_finished_fine_tunes_refit_is_skipped(tree, tmp_path):
    out = tmp_path / "run"
    auto_images(tree, out, budget="10m", candidates="codes", **TINY)
    append_log(out / "leaderboard.jsonl", {"candidate": "finetune-earlier", "kind": "finetune", "cost": [1, 9],
                                           "score": 0.5, "se": 0.1, "refit_s": 10_000})  # it may win: its refit
    result = auto_images(tree, out, budget="10m", **TINY)
    tunes = [r for r in result["leaderboard"] if r["kind"] == "finetune"]
    assert tunes and all(r["status"].startswith("skipped: needs about") for r in tunes)
    assert not list((out / "candidates").glob("finetune-*"))


def test_an_interrupted_auto_keeps_what_finished_and_a_rerun_resumes(tree, tmp_path, monkeypatch, capsys):
    real, calls, interrupt = auto_module._Run._codes_fold, [], {"now": True}

    def third_is_interrupted(self, c, k, codes):
        calls.append(c.name) if c.name not in calls else None
        if len(calls) == 3 and interrupt["now"]:
            interrupt["now"] = False
            raise KeyboardInterrupt  # Ctrl-C during the third candidate, once
        return real(self, c, k, codes)

    monkeypatch.setattr(auto_module._Run, "_codes_fold", third_is_interrupted)
    argv = ["auto", str(tree), "--out", str(tmp_path / "run"), "--candidates", "codes", *TINY_CLI]
    assert pipeline.main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    finished = read_log(tmp_path / "run" / "leaderboard.jsonl")
    assert list(finished) == calls[:2]
    calls.clear()
    assert pipeline.main(argv) == 0
    assert calls and not set(calls) & set(finished)  # the finished candidates were not trained again
    result = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert all(r["status"] == "done" for r in result["leaderboard"]) and len(result["leaderboard"]) == 2 + len(calls)
    assert "| # | candidate |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--budget", "soon"], "--budget"),
    (["--candidates", "codes,magic"], "--candidates must be"),
    (["--backbone", "lenet"], "unknown backbone"),
    (["--sample", "3"], "--sample must be"),
    (["--weights", "missing.pth"], "missing.pth"),
])
def test_bad_options_fail_in_one_line_before_any_work(tree, tmp_path, capsys, argv, message):
    try:
        code = pipeline.main(["auto", str(tree), "--out", str(tmp_path / "run"), *TINY_CLI, *argv])
    except SystemExit as refused:  # argparse's own refusal: usage, then one error line
        code = refused.code
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_too_few_images_and_another_runs_folder_are_refused_before_any_work(tree, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the advice ran")

    monkeypatch.setattr(auto_module, "_advice", never)
    few = make_tree(tmp_path / "few", per_class=2)
    assert pipeline.main(["auto", str(few), "--out", str(tmp_path / "a"), *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnncodes auto: error: ") and "at least 3 training images" in err and err.count("\n") == 1
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "settings.json").write_text(json.dumps({"seed": 5}))
    assert pipeline.main(["auto", str(tree), "--out", str(tmp_path / "b"), *TINY_CLI]) == 2
    assert "holds an auto run made with other" in capsys.readouterr().err


def test_a_fine_tuned_winner_is_refit_on_the_training_split_and_predicts(tree, tmp_path):
    result = auto_images(tree, tmp_path / "run", budget="10m", candidates="finetune", **TINY)
    assert {r["kind"] for r in result["leaderboard"]} == {"finetune"} and result["winner"]["kind"] == "finetune"
    assert json.loads((tmp_path / "run" / "started.json").read_text()) == {
        r["candidate"]: 1 for r in result["leaderboard"]}  # the epochs a resumed fine-tune must keep
    winner = Path(result["winner"]["run_dir"])
    report = json.loads((winner / "report.json").read_text())
    assert (report["n_train"], report["n_test"], report["finetune"]["n_val"]) == (16, 16, 0)
    assert not (tmp_path / "run" / "codes.h5").exists()  # no codes candidate, no extraction
    assert pipeline.main(["predict", str(winner), str(tree / "test"), "-o", str(tmp_path / "p.csv"), "--quiet"]) == 0


def test_a_killed_auto_resumes_its_fine_tune_where_the_kill_left_it(tree, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["auto", str(tree), "--out", str(out), "--candidates", "finetune", *TINY_CLI, "--epochs", "2"]
    killer = ("import os, signal, sys\nfrom cnncodes import pipeline\nfrom cnncodes.finetune import trainer\nsave = trainer.Trainer._save_checkpoint\n"
              "def save_then_die(self):\n    save(self)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              "trainer.Trainer._save_checkpoint = save_then_die\nsys.exit(pipeline.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", killer, *argv], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == -signal.SIGKILL  # killed right after the first fine-tune's first fold's first epoch
    first = json.loads((out / "started.json").read_text())
    assert list(first) == [name := next(iter(first))] and first[name] == 2
    assert not (out / "leaderboard.jsonl").exists()
    from cnncodes.finetune import trainer

    trained, real_epoch = [], trainer.Trainer._epoch

    def recorded(self, k):
        trained.append((self.out.parent.name, self.out.name, k))
        return real_epoch(self, k)

    monkeypatch.setattr(trainer.Trainer, "_epoch", recorded)
    assert pipeline.main(argv) == 0
    assert [(fold, k) for run, fold, k in trained if run == name] == [
        ("fold-1", 1), ("fold-2", 0), ("fold-2", 1), ("fold-3", 0), ("fold-3", 1)]  # fold 1's first epoch was kept
    fold_log = out / "candidates" / name / "fold-1" / "epochs.jsonl"
    epochs = [json.loads(line) for line in fold_log.read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    result = json.loads((out / "auto.json").read_text())
    assert all(r["status"] == "done" and r["epochs"] == 2 for r in result["leaderboard"])


@pytest.mark.parametrize("option", [["--candidates", "magic"], ["--budget", "0s"], ["--backbone", "lenet"]])
def test_bad_options_fail_before_torch_is_imported(tmp_path, option):
    code = "import sys\nfrom cnncodes import pipeline\ntry:\n    rc = pipeline.main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n" \
           "print(rc, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, "auto", str(tmp_path), "--out", str(tmp_path / "run"), *option],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.split() == ["2", "False"], done.stderr
