"""Out-of-core classify (classify/stream.py) on real HDF5 codes files, and the linear SVM solver settings."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from codes_fixtures import imbalanced_codes, make_codes, split_column, write_codes_file
from sklearn.svm import LinearSVC

from cnncodes.classify import classify_codes, load_model, models, predict_codes, stream, stream_cv
from cnncodes.classify.blocks import Blocks

REPO = Path(__file__).resolve().parents[1]
FAST = dict(progress=False, cv=3)
TINY = "64K"  # below the fixture's in-memory estimate (about 143 KiB), so it streams


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return make_codes(tmp_path_factory.mktemp("codes") / "codes.h5", n_per_class=(200, 120, 60))  # 380 rows


@pytest.fixture(scope="module")
def runs(codes, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {how: (base / how, classify_codes(codes, base / how, max_memory=budget, **FAST))
            for how, budget in (("memory", None), ("streamed", TINY))}


@pytest.mark.parametrize("text, expected", [("2G", 2 * 2 ** 30), ("512M", 512 * 2 ** 20), ("1.5GiB", 3 * 2 ** 29),
                                            ("300k", 300 * 1024), ("1000000", 1_000_000), (" 4 mb ", 4 * 2 ** 20)])
def test_parse_size(text, expected):
    assert stream.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "", "0", "-1G", "2X", "1e9", "G"])
def test_parse_size_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="memory size must look like 2G, 512M"):
        stream.parse_size(bad)


def test_default_budget_is_a_quarter_of_ram():
    import os
    assert stream.default_budget() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def test_dispatch_decision_from_file_shapes(codes):
    need = stream.in_memory_bytes(codes, ["block4"])
    assert need == stream.TRAIN_MEMORY_FACTOR * 380 * 24 * 4  # rows x dims x float32, from the shapes
    assert stream.in_memory_bytes(codes, ["block4", "penultimate"]) == stream.TRAIN_MEMORY_FACTOR * 380 * 40 * 4
    assert stream.should_stream(codes, "block4", need - 1)
    assert not stream.should_stream(codes, "block4", need)
    assert not stream.should_stream(codes, None, "1G")  # None: the file's first tap
    with pytest.raises(ValueError, match="memory size must look like"):
        stream.should_stream(codes, None, "much")


def test_streamed_report_has_the_in_memory_keys_and_a_close_score(runs):
    (_, mem), (out, streamed) = runs["memory"][:2], runs["streamed"]
    assert set(streamed) == set(mem)
    assert json.loads((out / "report.json").read_text()).keys() == mem.keys()
    for f in ("report.txt", "confusion.csv", "confusion.png", "model.joblib", "model.joblib.sha256"):
        assert (out / f).is_file()
    for key in ("n_train", "n_test", "train_class_counts", "test_class_counts", "split_source", "layers", "labels"):
        assert streamed[key] == mem[key], key
    assert abs(streamed["balanced_accuracy"] - mem["balanced_accuracy"]) <= 0.1
    assert streamed["notes"][0].startswith("streamed solver:") and "over the memory budget" in streamed["notes"][0]
    assert "SGD" in streamed["hyperparameter"] and set(stream_cv.ALPHA_GRID) <= set(streamed["cv_grid"]["alpha"])
    assert sum(sum(row) for row in streamed["confusion_matrix"]) == streamed["n_test"]


def test_streamed_model_predicts_like_its_report(codes, runs):
    import h5py
    out, report = runs["streamed"]
    with h5py.File(codes, "r") as h5:
        test = h5["split"].asstr()[()] == "test"
        X, y = h5["codes/block4"][()][test], h5["labels"][()][test]
    pred = load_model(out)["pipeline"].predict(X)
    assert report["accuracy"] == pytest.approx(float(np.mean(pred == y)))


def test_streamed_standard_normalization_and_test_fraction(codes, tmp_path):
    mem = classify_codes(codes, tmp_path / "m", normalize="standard", test_fraction=0.3, **FAST)
    streamed = classify_codes(codes, tmp_path / "s", normalize="standard", test_fraction=0.3, max_memory=TINY, **FAST)
    assert streamed["train_class_counts"] == mem["train_class_counts"]  # the same split, from the row columns
    scaler = load_model(tmp_path / "s")["pipeline"].named_steps["normalize"]
    assert scaler.n_samples_seen_ == streamed["n_train"]  # one streaming pass over every training row


def test_streamed_refuses_what_needs_every_code_in_memory(codes, tmp_path):
    with pytest.raises(ValueError, match="knn needs every code in memory"):
        classify_codes(codes, tmp_path, classifier="knn", max_memory=TINY, **FAST)
    with pytest.raises(ValueError, match="sampling 'over' needs every code in memory"):
        classify_codes(codes, tmp_path, sampling="over", max_memory=TINY, **FAST)


def test_streamed_predict_writes_the_in_memory_csv(tmp_path, runs):
    failed = np.zeros(102, bool)
    failed[[3, 50]] = True
    new = make_codes(tmp_path / "new.h5", ok=~failed)
    for how in ("memory", "streamed"):
        run_dir = runs[how][0]
        expected = predict_codes(run_dir, new, tmp_path / f"{how}-mem.csv")
        got = stream.predict_streamed(run_dir, new, tmp_path / f"{how}-stream.csv", max_memory=TINY)
        assert got == {**expected, "out_csv": str(tmp_path / f"{how}-stream.csv")}
        assert (tmp_path / f"{how}-stream.csv").read_text() == (tmp_path / f"{how}-mem.csv").read_text()
    assert got["n_failed"] == 2


def test_predict_codes_streams_codes_over_the_default_budget(tmp_path, runs, monkeypatch):
    new = make_codes(tmp_path / "new.h5")
    expected = predict_codes(runs["memory"][0], new, tmp_path / "mem.csv")
    calls = []
    monkeypatch.setattr(stream, "default_budget", lambda: 1024)
    monkeypatch.setattr(stream, "Blocks", lambda *a: calls.append(a) or Blocks(*a))
    assert predict_codes(runs["memory"][0], new, tmp_path / "stream.csv")["n_rows"] == expected["n_rows"]
    assert calls and (tmp_path / "stream.csv").read_text() == (tmp_path / "mem.csv").read_text()


def test_cli_max_memory(codes, tmp_path, capsys):
    cmd = [sys.executable, str(REPO / "pipeline.py"), "classify", str(codes), "--out", str(tmp_path / "run"),
           "--cv", "3", "--quiet"]
    bad = subprocess.run(cmd + ["--max-memory", "lots"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "cnncodes classify: error: memory size must look like 2G, 512M or 1000000 (bytes), got 'lots'"]

    from cnncodes import pipeline
    assert pipeline.main(cmd[2:-1] + ["--max-memory", TINY]) == 0
    out = capsys.readouterr().out
    assert "streamed solver:" in out and "streamed SGD" in out.splitlines()[-1]  # report notes and summary


def test_svm_solver_change_keeps_accuracy(tmp_path, monkeypatch):
    # fewer training rows (63) than features (block4: 120), where the previous dual="auto" ran the dual solver
    X, y = imbalanced_codes((40, 30, 20), n_features=120, sep=1.0)
    codes = write_codes_file(tmp_path / "wide.h5", X, y, ["cat", "dog", "bird"], split=split_column(y))
    now = {layer: classify_codes(codes, tmp_path / f"now-{layer}", layers=layer, **FAST)
           for layer in ("block4", "penultimate")}
    previous = replace(models.CLASSIFIERS["svm"], warm_path=False, build=lambda cw, seed: LinearSVC(
        class_weight=cw, dual="auto", max_iter=10000, random_state=seed))
    monkeypatch.setitem(models.CLASSIFIERS, "svm", previous)
    for layer, report in now.items():
        before = classify_codes(codes, tmp_path / f"before-{layer}", layers=layer, **FAST)
        assert report["C"] == before["C"]
        assert report["balanced_accuracy"] == pytest.approx(before["balanced_accuracy"], abs=0.02)
        assert report["cv_score"] == pytest.approx(before["cv_score"], abs=0.02)


def test_compare_streams_layer_sets_over_max_memory(codes, tmp_path):
    from cnncodes.classify import compare

    rows = compare(codes, tmp_path / "cmp", classifiers=["svm", "softmax"], layers="block4", max_memory=TINY, **FAST)
    assert {r["classifier"] for r in rows} == {"svm", "softmax"}
    assert all(r["hyperparameter"].endswith("streamed SGD") for r in rows)
    report = json.loads((tmp_path / "cmp" / "svm__block4" / "report.json").read_text())
    assert report["notes"][0].startswith("streamed solver:")
    in_memory = compare(codes, tmp_path / "mem", classifiers=["svm"], layers="block4", max_memory="1G", **FAST)
    assert not in_memory[0]["hyperparameter"].endswith("streamed SGD")


def test_compare_refuses_in_memory_classifiers_on_streamed_codes_before_training(codes, tmp_path):
    from cnncodes.classify import compare

    with pytest.raises(ValueError, match="classifier knn needs every code in memory"):
        compare(codes, tmp_path / "cmp", classifiers=["svm", "knn"], layers="block4", max_memory=TINY, **FAST)
    with pytest.raises(ValueError, match="sampling 'over' needs every code in memory"):
        compare(codes, tmp_path / "cmp", classifiers=["svm"], sampling="none,over", max_memory=TINY, **FAST)
    assert not (tmp_path / "cmp").exists() or not any((tmp_path / "cmp").iterdir())


def test_cli_compare_and_run_take_max_memory(codes, tmp_path, capsys):
    from cnncodes import pipeline
    from conftest import FAST as EXTRACT_FAST, make_tree

    assert pipeline.main(["compare", str(codes), "--out", str(tmp_path / "cmp"), "--classifiers", "svm",
                          "--layers", "block4", "--cv", "3", "--max-memory", TINY, "--quiet"]) == 0
    assert "streamed SGD" in (tmp_path / "cmp" / "compare.md").read_text()
    images = make_tree(tmp_path / "images", per_class=4)
    assert pipeline.main(["run", str(images), "--out", str(tmp_path / "run"), *EXTRACT_FAST, "--workers", "0",
                          "--max-memory", "lots"]) == 2
    assert "memory size must look like 2G" in capsys.readouterr().err
    assert not (tmp_path / "run" / "codes.h5").exists()  # refused before the extraction


def test_streamed_cv_fits_are_capped_without_convergence_notes(codes, tmp_path, monkeypatch):
    seen = []
    grid_search = stream_cv.GridSearchCV
    monkeypatch.setattr(stream_cv, "GridSearchCV", lambda est, *a, **k: seen.append(est.get_params()["clf__max_iter"])
                        or grid_search(est, *a, **k))
    monkeypatch.setattr(stream_cv, "CV_MAX_EPOCHS", 1)  # far from converged: every CV fit would warn
    report = classify_codes(codes, tmp_path, max_memory=TINY, **FAST)
    assert seen and set(seen) == {1}  # one search per grid (the standard one, then each widening)
    assert any("at most 1 epochs per fit)" in note for note in report["notes"])
    assert not any("ConvergenceWarning" in note for note in report["notes"])


@pytest.mark.parametrize("budget", [None, "4K"])
def test_test_file_holding_training_images_refused_in_memory_and_streamed(codes, tmp_path, budget):
    # issue 22 item 5: the streamed path accepted the training file as --test and reported 1.000
    with pytest.raises(ValueError, match=r"holds \d+ of the \d+ training images"):
        classify_codes(codes, tmp_path / "out", test=codes, max_memory=budget, **FAST)
    assert not (tmp_path / "out" / "model.joblib").exists()


def test_overlap_check_finds_a_few_reextracted_training_images_in_small_blocks(tmp_path):
    X, y = imbalanced_codes()
    train = write_codes_file(tmp_path / "train.h5", X, y, ["cat", "dog", "bird"])
    other, oy = imbalanced_codes((20, 10, 6), seed=1)
    paths = [f"new/{i}.png" for i in range(len(oy))] + ["img/00004.png", "img/00009.png"]
    mixed = {t: np.vstack([other[t], X[t][[4, 9]] * (1 + 1e-4)]) for t in X}  # the same images, other precision
    test = write_codes_file(tmp_path / "test.h5", mixed, np.concatenate([oy, y[[4, 9]]]), ["cat", "dog", "bird"],
                            paths=paths)
    with pytest.raises(ValueError, match=r"holds 2 of the 102 training images .*first: img/00004.png"):
        classify_codes(train, tmp_path / "out", test=test, max_memory="4K", **FAST)


def test_streamed_cv_scaler_is_fitted_on_training_folds_only(codes, tmp_path, monkeypatch):
    # issue 22 item 12: the CV's scaler had been fitted on every training row, validation folds included
    from sklearn.preprocessing import StandardScaler

    seen, fit = [], StandardScaler.fit
    monkeypatch.setattr(StandardScaler, "fit",
                        lambda self, X, y=None, **kw: seen.append(len(X)) or fit(self, X, y, **kw))
    report = classify_codes(codes, tmp_path, max_memory=TINY, **FAST)
    note = next(n for n in report["notes"] if n.startswith("alpha chosen by"))
    sample = int(re.search(r"sample of (\d+) of", note)[1])
    folds = report["cv_folds"]
    assert len(seen) == folds * len(report["cv_grid"]["alpha"])  # one scaler per CV fit
    assert all(n <= sample * (folds - 1) // folds + folds for n in seen)  # its training folds, never the whole sample


def test_streamed_report_states_the_cv_it_ran(codes, tmp_path):
    # issue 22 item 11: "5-fold" in cv_folds while fewer folds ran on a tiny sample, silently; "budget of 0 MiB"
    with pytest.warns(UserWarning, match="too few rows to mean much"):
        report = classify_codes(codes, tmp_path, max_memory="16K", progress=False, cv=10)
    note = next(n for n in report["notes"] if n.startswith("alpha chosen by"))
    folds, rows = map(int, re.search(r"by (\d+)-fold CV on a stratified in-memory sample of (\d+) of", note).groups())
    assert folds == report["cv_folds"] and rows < report["n_train"]
    assert f"chosen by {folds}-fold CV" in (tmp_path / "report.txt").read_text()
    assert "memory budget of 16 KiB" in report["notes"][0]
    assert any("too few rows to mean much" in n for n in report["notes"])


def test_search_alpha_widens_a_decade_at_a_time_towards_the_preferred_edge():
    # issue 22 item 13: the svm grid had been widened by hand after looking at hymenoptera's held-out score
    def run(curve, bounds=stream_cv.ALPHA_BOUNDS):
        calls = []
        best, score, tried, notes = stream_cv.search_alpha(lambda a: calls.append(a) or [curve(x) for x in a],
                                                           lambda _: None, stream_cv.ALPHA_GRID, bounds)
        return best, tried, calls, notes

    best, tried, calls, notes = run(lambda a: -abs(np.log10(a) + 7))  # peaks at 1e-7, below the grid
    assert (best, tried) == (1e-7, [1e-8, 1e-7, *stream_cv.ALPHA_GRID])
    assert calls == [list(stream_cv.ALPHA_GRID), [1e-7], [1e-8]]  # one decade per step, each scored once
    assert [n.split(":")[0] for n in notes] == ["alpha grid widened to 1e-07", "alpha grid widened to 1e-08"]
    best, tried, calls, notes = run(lambda a: a)  # more is always better: stops at the upper bound
    assert (best, tried[-3:], calls[-2:]) == (1.0, [1e-2, 1e-1, 1.0], [[0.1], [1.0]])
    assert "alpha=1 is a bound of the search" in notes[-1]
    best, tried, calls, _ = run(lambda a: 0.5)  # a plateau: the extension ties, so it is not chosen
    assert (best, tried, calls[1:]) == (1e-6, [1e-7, *stream_cv.ALPHA_GRID], [[1e-7]])
    assert run(lambda a: a, bounds=(1e-6, 1e-2))[1:3] == (list(stream_cv.ALPHA_GRID), [list(stream_cv.ALPHA_GRID)])


def test_streamed_alpha_grid_widens_where_training_cv_prefers_its_edge(codes, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_cv, "ALPHA_GRID", (10.0,))  # SGD at alpha=10 underfits these codes (CV about 0.4)
    report = classify_codes(codes, tmp_path / "wide", max_memory=TINY, **FAST)
    tried, alpha = report["cv_grid"]["alpha"], report["best_params"]["alpha"]
    assert tried == [10.0 ** e for e in range(round(np.log10(tried[0])), 2)]  # whole decades down from 10
    assert 1.0 in tried and alpha < 10 and (alpha > tried[0] or tried[0] == stream_cv.ALPHA_BOUNDS[0])
    assert "alpha grid widened to 1: CV chose 10, the edge of the alphas tried" in report["notes"]
    monkeypatch.setattr(stream_cv, "ALPHA_BOUNDS", (1.0, 10.0))
    report = classify_codes(codes, tmp_path / "bound", max_memory=TINY, **FAST)
    assert report["cv_grid"] == {"alpha": [1.0, 10.0]} and report["best_params"] == {"alpha": 1.0}
    assert any(n.startswith("alpha=1 is a bound of the search (1 ... 10)") for n in report["notes"])


def test_streamed_alpha_is_chosen_on_training_folds_only(tmp_path):
    X, y = imbalanced_codes((80, 50, 30))
    split = np.array(split_column(y))
    shuffled = y.copy()
    shuffled[split == "test"] = np.roll(y[split == "test"], 7)  # other labels for the held-out rows only
    reports = [classify_codes(write_codes_file(tmp_path / f"{i}.h5", X, labels, ["cat", "dog", "bird"], split=split),
                              tmp_path / f"run{i}", max_memory="48K", **FAST) for i, labels in enumerate((y, shuffled))]
    assert reports[0]["balanced_accuracy"] != reports[1]["balanced_accuracy"]  # the held-out labels do differ
    for key in ("best_params", "cv_score", "cv_grid", "cv_folds"):
        assert reports[0][key] == reports[1][key], key
