"""classify_codes on real HDF5 codes files: splits, metrics, imbalance options, errors, report files
(the two-class section, class counts, warnings as one line)."""
from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from codes_fixtures import binary_codes, imbalanced_codes, make_codes, recipe, split_column, write_codes_file
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, f1_score, roc_auc_score)

import cnncodes.classify.render

from cnncodes import classify
from cnncodes import pipeline
from cnncodes.classify import classify_codes, compare, load_model, summarize
from cnncodes.extract.codesfile import RecipeMismatch

NAMES = ["cat", "dog", "bird"]
FAST = dict(progress=False, cv=3)


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return make_codes(tmp_path_factory.mktemp("codes") / "codes.h5")


@pytest.fixture(scope="module")
def run(codes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, classify_codes(codes, out, **FAST)


def _test_rows(path, split="test"):
    """Labels and codes of the evaluation rows, read with plain h5py (independent of classify/)."""
    with h5py.File(path, "r") as h5:
        use = h5["ok"][()] & (h5["labels"][()] >= 0) & (h5["split"].asstr()[()] == split)
        return h5["codes/block4"][()][use], h5["labels"][()][use]


def test_report_numbers_match_sklearn_recomputed_from_predictions(codes, run):
    out, report = run
    X, y = _test_rows(codes)
    pred = load_model(out)["pipeline"].predict(X)
    labels = sorted(set(y) | set(pred))
    assert report["n_test"] == len(y) == sum(r["support"] for r in report["per_class"].values())
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    assert report["labels"] == [NAMES[i] for i in labels]
    table = classification_report(y, pred, labels=labels, target_names=report["labels"], output_dict=True,
                                  zero_division=0)
    for name, row in report["per_class"].items():
        assert row["precision"] == pytest.approx(table[name]["precision"])
        assert row["recall"] == pytest.approx(table[name]["recall"])
        assert row["f1"] == pytest.approx(table[name]["f1-score"])
        assert row["support"] == table[name]["support"]


def test_report_settings_and_cv(codes, run):
    out, report = run
    assert report["layers"] == ["block4"]  # the file's first tap
    assert report["classifier"] == "svm" and report["normalize"] == "power"
    assert report["class_weight"] == "balanced" and report["sampling"] == "none"
    assert report["C"] in report["cv_grid"]["C"] and report["cv_folds"] == 3
    assert 0 <= report["cv_score"] <= 1
    assert report["split_source"] == "split column (train / test)"
    assert report["train_class_counts"] == {"cat": 42, "dog": 21, "bird": 8}
    assert report["n_train"] == 71 and report["n_failed_excluded"] == 0
    assert report["recipe"] == recipe({"block4": 24, "penultimate": 16})
    assert report["codes"] == str(codes)
    bundle = load_model(out)
    assert bundle["class_names"] == NAMES and bundle["layers"] == ["block4"]
    assert bundle["recipe"] == report["recipe"] and bundle["settings"]["C"] == report["C"]
    assert bundle["pipeline"].named_steps["clf"].C == report["C"]
    assert f"C={report['C']:g}" == report["hyperparameter"] and report["hyperparameter"] in summarize(report)


def test_report_files(run):
    out, report = run
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "labels", "C",
                "cv_score", "classifier", "normalize", "class_weight", "sampling", "layers", "n_train", "n_test",
                "n_failed_excluded", "recipe", "codes"):
        assert on_disk[key] == report[key], key
    with open(out / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == report["labels"]
    assert [r[0] for r in rows[1:]] == report["labels"]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == report["confusion_matrix"]
    text = (out / "report.txt").read_text()
    assert f"{report['balanced_accuracy']:.4f}" in text and f"{report['macro_f1']:.4f}" in text
    assert all(name in text for name in NAMES)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))


def test_concatenated_layers_in_given_order(codes, tmp_path):
    report = classify_codes(codes, tmp_path, layers=["penultimate", "block4"], C=1.0, **FAST)
    assert report["layers"] == ["penultimate", "block4"]
    pipe = load_model(tmp_path)["pipeline"]
    assert pipe.named_steps["clf"].coef_.shape[1] == 16 + 24
    with h5py.File(codes, "r") as h5:
        use = h5["split"].asstr()[()] == "test"
        X = np.hstack([h5["codes/penultimate"][()][use], h5["codes/block4"][()][use]])
        y = h5["labels"][()][use]
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pipe.predict(X)))
    assert classify_codes(codes, tmp_path / "b", layers="penultimate+block4", C=1.0, **FAST)["layers"] == \
        ["penultimate", "block4"]


@pytest.mark.parametrize("classifier,cv", [("softmax", 0), ("knn", 2), ("rbf_svm", 2), ("forest", 0)])
def test_other_classifiers(codes, tmp_path, classifier, cv):
    report = classify_codes(codes, tmp_path, classifier=classifier, cv=cv, progress=False)
    X, y = _test_rows(codes)
    pred = load_model(tmp_path)["pipeline"].predict(X)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert report["classifier"] == classifier and report["hyperparameter"]


@pytest.mark.parametrize("normalize", ["none", "standard", "l2", "power"])
def test_normalizations(codes, tmp_path, normalize):
    report = classify_codes(codes, tmp_path, normalize=normalize, C=1.0, cv=0, progress=False)
    step = load_model(tmp_path)["pipeline"].named_steps["normalize"]
    X, _ = _test_rows(codes)
    if normalize == "none":
        assert step == "passthrough"
    elif normalize == "standard":
        assert step.transform(X).mean(axis=0) == pytest.approx(np.zeros(24), abs=0.6)
    else:  # l2 and power give unit rows; power is the signed square root first
        Z = step.transform(X)
        assert np.linalg.norm(Z, axis=1) == pytest.approx(np.ones(len(X)))
        if normalize == "power":
            expected = np.sqrt(X) / np.linalg.norm(np.sqrt(X), axis=1, keepdims=True)
            assert Z == pytest.approx(expected)
    assert report["normalize"] == normalize and report["cv_score"] is None and report["C"] == 1.0


# --- splits --------------------------------------------------------------------------------------

def test_val_split_used_when_no_test(tmp_path):
    codes, y = imbalanced_codes()
    path = write_codes_file(tmp_path / "v.h5", codes, y, NAMES, split=split_column(y, val=True))
    report = classify_codes(path, tmp_path / "out", C=1.0, **FAST)
    assert report["split_source"] == "split column (train / val)"
    assert report["n_test"] == len(_test_rows(path, "val")[1])


def test_no_split_defaults_to_stratified_quarter_and_says_so(tmp_path):
    path = make_codes(tmp_path / "nosplit.h5", with_split=False)
    report = classify_codes(path, tmp_path / "out", C=1.0, **FAST)
    assert "0.25" in report["split_source"] and "no usable" in report["split_source"]
    assert any("0.25" in n for n in report["notes"])
    assert report["n_test"] == 26 and report["n_train"] == 76  # 102 rows
    for name, n in zip(NAMES, (60, 30, 12)):  # stratified: each class keeps its share, within rounding
        assert abs(report["test_class_counts"][name] - 0.25 * n) <= 1
    assert "0.25" in (tmp_path / "out" / "report.txt").read_text()


def test_test_fraction_is_stratified_and_seeded(codes, tmp_path):
    a = classify_codes(codes, tmp_path / "a", test_fraction=0.5, seed=3, C=1.0, **FAST)
    b = classify_codes(codes, tmp_path / "b", test_fraction=0.5, seed=3, C=1.0, **FAST)
    assert a["test_class_counts"] == {"cat": 30, "dog": 15, "bird": 6}
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["split_source"].startswith("stratified 0.5")


def test_test_file_maps_classes_by_name_and_counts_failures(tmp_path):
    codes, y = imbalanced_codes(seed=0)
    train = write_codes_file(tmp_path / "train.h5", codes, y, NAMES)
    tcodes, ty = imbalanced_codes((20, 10, 6), seed=1)
    order = ["bird", "cat", "dog"]  # same classes, another index order
    ty2 = np.array([order.index(NAMES[v]) for v in ty])
    ok = np.ones(len(ty), bool)
    ok[:2] = False
    test = write_codes_file(tmp_path / "test.h5", tcodes, ty2, order, ok=ok)
    report = classify_codes(train, tmp_path / "out", test=test, C=1.0, **FAST)
    assert report["test_codes"] == str(test) and report["n_train"] == len(y)
    assert report["n_test"] == len(ty) - 2 and report["n_failed_excluded"] == 2
    expected = {NAMES[c]: int(n) for c, n in zip(*np.unique(ty[ok], return_counts=True))}
    assert report["test_class_counts"] == expected
    pred = load_model(tmp_path / "out")["pipeline"].predict(tcodes["block4"][ok].astype(np.float32))
    assert report["accuracy"] == pytest.approx(accuracy_score(ty[ok], pred))


def test_test_file_with_other_recipe_refused(tmp_path):
    codes, y = imbalanced_codes()
    train = write_codes_file(tmp_path / "train.h5", codes, y, NAMES)
    other = recipe({"block4": 24, "penultimate": 16}, preprocess={"resize": 128, "crop": 112})
    test = write_codes_file(tmp_path / "test.h5", codes, y, NAMES, rec=other)
    with pytest.raises(RecipeMismatch, match="preprocess"):
        classify_codes(train, tmp_path / "out", test=test, **FAST)
    assert not (tmp_path / "out" / "report.json").exists()


def test_test_file_with_unknown_class_refused(tmp_path):
    codes, y = imbalanced_codes()
    train = write_codes_file(tmp_path / "train.h5", codes, y, NAMES)
    test = write_codes_file(tmp_path / "test.h5", codes, y, ["cat", "dog", "fish"])
    with pytest.raises(ValueError, match="fish"):
        classify_codes(train, tmp_path / "out", test=test, **FAST)


def test_failed_and_unlabeled_rows_excluded_and_counted(tmp_path):
    codes, y = imbalanced_codes()
    split = split_column(y)
    ok = np.ones(len(y), bool)
    ok[[0, 5, 9]] = False
    labels = y.copy()
    labels[[1, 2]] = -1
    path = write_codes_file(tmp_path / "f.h5", codes, labels, NAMES, split=split, ok=ok)
    report = classify_codes(path, tmp_path / "out", C=1.0, **FAST)
    keep = ok & (labels >= 0)
    assert report["n_failed_excluded"] == 3 and report["n_unlabeled_excluded"] == 2
    assert report["n_train"] == int((keep & (np.array(split) == "train")).sum())
    assert report["n_test"] == int((keep & (np.array(split) == "test")).sum())


# --- imbalance -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling,expected", [
    ("none", {"cat": 42, "dog": 21, "bird": 8}),
    ("over", {"cat": 42, "dog": 42, "bird": 42}),      # every class up to the largest
    ("under", {"cat": 8, "dog": 8, "bird": 8}),        # every class down to the smallest
    ("hybrid", {"cat": 21, "dog": 21, "bird": 21}),    # minorities up, majorities down, to the median
])
def test_sampling_modes_on_training_split_only(codes, tmp_path, sampling, expected):
    report = classify_codes(codes, tmp_path, classifier="knn", sampling=sampling, cv=0, progress=False)
    assert report["train_class_counts"] == {"cat": 42, "dog": 21, "bird": 8}
    assert report["resampled_class_counts"] == expected
    # kNN stores what it was fitted on: the classifier really saw the resampled training set
    assert load_model(tmp_path)["pipeline"].named_steps["clf"].n_samples_fit_ == sum(expected.values())
    assert report["test_class_counts"] == {"cat": 18, "dog": 9, "bird": 4}  # the test split is never resampled


def test_sampling_inside_cv_folds(codes, tmp_path):
    report = classify_codes(codes, tmp_path, sampling="hybrid", **FAST)
    assert report["cv_folds"] == 3 and report["resampled_class_counts"] == {"cat": 21, "dog": 21, "bird": 21}
    steps = [name for name, _ in load_model(tmp_path)["pipeline"].steps]
    assert steps == ["normalize", "hybrid", "clf"]  # one sampler: the median is computed once


@pytest.mark.parametrize("spec,expected", [("balanced", "balanced"), ("none", None),
                                           ("bird=5,dog=2", {2: 5.0, 1: 2.0})])
def test_class_weight(codes, tmp_path, spec, expected):
    report = classify_codes(codes, tmp_path, class_weight=spec, C=1.0, cv=0, progress=False)
    assert load_model(tmp_path)["pipeline"].named_steps["clf"].class_weight == expected
    assert report["class_weight"] == spec


def test_explicit_class_weight_shifts_predictions(codes, tmp_path):
    X, _ = _test_rows(codes)
    light = classify_codes(codes, tmp_path / "a", class_weight="none", C=1.0, cv=0, progress=False)
    heavy = classify_codes(codes, tmp_path / "b", class_weight="bird=30", C=1.0, cv=0, progress=False)
    n_bird = [int((load_model(tmp_path / d)["pipeline"].predict(X) == 2).sum()) for d in ("a", "b")]
    assert n_bird[1] > n_bird[0]
    assert heavy["per_class"]["bird"]["recall"] >= light["per_class"]["bird"]["recall"]
    assert heavy["class_weight_applied"] == {"bird": 30.0}


@pytest.mark.parametrize("spec,message", [("fish=2", "fish"), ("cat=2,horse=1", "horse"), ("cat", "CLASS=WEIGHT"),
                                          ("cat=heavy", "not a number"), ("cat=-1", "positive")])
def test_bad_class_weight(codes, tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        classify_codes(codes, tmp_path, class_weight=spec, **FAST)


# --- errors --------------------------------------------------------------------------------------

def test_no_labels(tmp_path):
    codes, y = imbalanced_codes()
    path = write_codes_file(tmp_path / "u.h5", codes, np.full(len(y), -1), NAMES)
    with pytest.raises(ValueError, match="no labels"):
        classify_codes(path, tmp_path / "out", **FAST)


def test_only_one_class(tmp_path):
    codes, y = imbalanced_codes()
    path = write_codes_file(tmp_path / "one.h5", codes, np.zeros(len(y), int), NAMES, split=split_column(y))
    with pytest.raises(ValueError, match=r"only one class \(cat\)"):
        classify_codes(path, tmp_path / "out", **FAST)


def test_class_with_single_training_example_named(tmp_path):
    codes, y = imbalanced_codes((40, 20, 3))
    split = np.array(split_column(y), dtype=object)
    birds = np.flatnonzero(y == 2)
    split[birds] = ["train", "test", "test"]
    path = write_codes_file(tmp_path / "s.h5", codes, y, NAMES, split=list(split))
    with pytest.raises(ValueError, match=r"'bird' has a single training example.*at least 2"):
        classify_codes(path, tmp_path / "out", **FAST)
    # without cross-validation a fixed C still trains
    assert classify_codes(path, tmp_path / "out", C=1.0, cv=0, progress=False)["train_class_counts"]["bird"] == 1


def test_small_class_reduces_folds_with_warning(tmp_path):
    codes, y = imbalanced_codes((40, 20, 4))
    split = np.array(["train"] * len(y), dtype=object)
    split[np.flatnonzero(y == 0)[:10]] = "test"
    split[np.flatnonzero(y == 2)[:1]] = "test"
    path = write_codes_file(tmp_path / "r.h5", codes, y, NAMES, split=list(split))
    with pytest.warns(UserWarning, match="reduced from 5 to 3 folds.*'bird'"):
        report = classify_codes(path, tmp_path / "out", cv=5, progress=False)
    assert report["cv_folds"] == 3 and any("reduced" in n for n in report["notes"])


def test_nan_codes_in_ok_rows(tmp_path):
    codes, y = imbalanced_codes()
    codes["block4"][[3, 4, 7]] = np.nan
    codes["block4"][8, 0] = np.inf
    path = write_codes_file(tmp_path / "nan.h5", codes, y, NAMES, split=split_column(y))
    with pytest.raises(ValueError, match="4 row"):
        classify_codes(path, tmp_path / "out", **FAST)


def test_unknown_layer_lists_available(codes, tmp_path):
    with pytest.raises(ValueError, match="fc7.*available layers: block4, penultimate"):
        classify_codes(codes, tmp_path, layers=["fc7"], **FAST)


@pytest.mark.parametrize("option", [{"classifier": "xgboost"}, {"normalize": "zca"}, {"sampling": "smote"}])
def test_unknown_options(codes, tmp_path, option):
    with pytest.raises(ValueError, match="choose one of"):
        classify_codes(codes, tmp_path, **option, **FAST)


def test_output_dir_not_writable(codes, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write to output directory"):
        classify_codes(codes, blocker / "out", **FAST)
    assert blocker.read_text() == "x"


def test_failure_while_writing_leaves_nothing_half_written(codes, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(classify.render, "plot_confusion", broken)
    with pytest.raises(OSError):
        classify_codes(codes, tmp_path, C=1.0, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_large_training_sets_choose_C_on_a_stratified_sample_then_fit_all_rows(codes, tmp_path, monkeypatch):
    import cnncodes.classify.train
    from cnncodes import classify
    from cnncodes.classify.cv import cv_subsample

    monkeypatch.setattr(classify.train, "CV_MAX_ROWS", 40)
    report = classify_codes(codes, tmp_path, **FAST)
    note = next(n for n in report["notes"] if "stratified sample" in n)
    assert f"sample of 40 of {report['n_train']} training rows" in note
    X, y = np.arange(200).reshape(100, 2), np.repeat([0, 1, 2, 3], 25)
    Xs, ys = cv_subsample(X, y, 40, seed=0)
    assert len(ys) == 40 and np.bincount(ys).tolist() == [10, 10, 10, 10]
    assert np.all(np.diff(Xs[:, 0]) > 0)  # rows keep their order


def test_progress_log_names_the_cv_plan_and_its_choice(codes, tmp_path, capsys):
    report = classify_codes(codes, tmp_path / "logged", progress=True, cv=3)
    err = capsys.readouterr().err
    n_values = len(report["cv_grid"]["C"])
    assert f"3-fold CV over C in {report['cv_grid']['C']}" in err
    assert f"{3 * n_values} fits" in err
    assert f"CV chose C={report['C']} (balanced_accuracy {report['cv_score']:.4f})" in err
    assert f"fitting on all {report['n_train']} training rows" in err
    assert err.index("CV chose") < err.index("evaluating on")


def test_load_codes_names_the_splits_a_file_has(tmp_path):
    # issue 22 item 24: split="test" on a train/val file returned (0, D) silently
    import cnncodes

    codes, y = imbalanced_codes()
    path = write_codes_file(tmp_path / "tv.h5", codes, y, NAMES, split=split_column(y, val=True))
    assert len(cnncodes.load_codes(path, split="val").y) == split_column(y, val=True).count("val")
    with pytest.raises(ValueError, match=r"has no 'test' rows; its splits: train \(\d+\), val \(\d+\); its "
                                         r"evaluation split \(test, else val\) is val"):
        cnncodes.load_codes(path, split="test")
    report = classify_codes(path, tmp_path / "out", C=1.0, **FAST)
    assert report["split_source"] == "split column (train / val)"  # the same rule


@pytest.mark.parametrize("sampling", ["over", "hybrid"])
def test_calibration_folds_split_original_rows_and_resample_inside(codes, tmp_path, monkeypatch, sampling):
    # issue 22 item 12: over-sampling before the calibration folds put copies of one row on both sides
    from sklearn.calibration import CalibratedClassifierCV

    seen, fit = [], CalibratedClassifierCV.fit
    monkeypatch.setattr(CalibratedClassifierCV, "fit", lambda self, X, y, **kw: seen.append(X) or fit(self, X, y, **kw))
    report = classify_codes(codes, tmp_path, sampling=sampling, calibrate=True, C=1.0, cv=0, progress=False)
    (X,) = seen
    assert len(X) == report["n_train"] and len(np.unique(X, axis=0)) == len(X)  # no copies to straddle a fold
    assert report["resampled_class_counts"] != report["train_class_counts"]  # the final fit still resamples
    pipe = load_model(tmp_path)["pipeline"]
    assert [name for name, _ in pipe.steps] == ["normalize", "clf"]
    assert sampling in pipe.named_steps["clf"].estimator.named_steps


def test_cv_sample_keeps_every_class_in_every_fold():
    # a budget-sized sample of 10 rows once left one class a single row: "1-fold CV" crashed
    from cnncodes.classify.cv import cv_sample

    y = np.repeat([0, 1, 2], [60, 20, 10])
    index, folds = cv_sample(y, 10, 5, seed=0)
    assert folds == 5 and np.bincount(y[index]).min() >= 5 and np.all(np.diff(index) > 0)
    assert cv_sample(y, 1000, 5, seed=0)[0].tolist() == list(range(90))  # small enough: every row


def test_binary_report_has_roc_pr_sensitivity_specificity(tmp_path):
    train, codes, y = binary_codes(tmp_path)
    report = classify_codes(train, tmp_path / "run", C=1.0, cv=0, progress=False)
    binary = report["binary"]
    pipe = load_model(tmp_path / "run")["pipeline"]
    test = np.array(split_column(y)) == "test"
    X, y_test = codes["block4"][test].astype(np.float32), y[test]
    scores = pipe.decision_function(X)
    assert binary["positive_class"] == "yes" and binary["negative_class"] == "no"
    assert binary["score"] == "decision_function"
    assert binary["roc_auc"] == pytest.approx(roc_auc_score(y_test, scores))
    assert binary["average_precision"] == pytest.approx(average_precision_score(y_test, scores))
    assert binary["sensitivity"] == pytest.approx(report["per_class"]["yes"]["recall"])
    assert binary["specificity"] == pytest.approx(report["per_class"]["no"]["recall"])
    assert len(binary["pr_curve"]["precision"]) == len(binary["pr_curve"]["recall"]) > 2
    for name in ("pr_curve.png", "roc.png"):
        assert (tmp_path / "run" / name).read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "run" / "report.txt").read_text()
    assert f"sensitivity:       {binary['sensitivity']:.4f}" in text
    assert f"specificity:       {binary['specificity']:.4f}" in text and "ROC AUC:" in text
    json.loads((tmp_path / "run" / "report.json").read_text())  # strict JSON: no Infinity thresholds

    flipped = classify_codes(train, tmp_path / "flip", C=1.0, cv=0, positive="no", progress=False)["binary"]
    assert flipped["positive_class"] == "no" and flipped["sensitivity"] == pytest.approx(binary["specificity"])
    assert flipped["roc_auc"] == pytest.approx(binary["roc_auc"])


def test_multiclass_report_has_no_binary_section(tmp_path):
    report = classify_codes(make_codes(tmp_path / "c.h5"), tmp_path / "run", C=1.0, cv=0, progress=False)
    assert report["binary"] is None and not (tmp_path / "run" / "roc.png").exists()
    with pytest.raises(ValueError, match="two-class"):
        classify_codes(tmp_path / "c.h5", tmp_path / "run2", C=1.0, cv=0, positive="cat", progress=False)


def test_convergence_warnings_become_one_clean_line_and_a_note(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "r"), "--max-iter", "1", "--cv", "3",
                          "--quiet"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "ConvergenceWarning" in line]
    assert len(lines) == 1 and lines[0].startswith("cnncodes classify: warning: ConvergenceWarning in svm (")
    assert "--max-iter" in lines[0] and ".py" not in err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["max_iter"] == 1 and any("ConvergenceWarning" in n for n in report["notes"])
    assert load_model(tmp_path / "r")["pipeline"].named_steps["clf"].max_iter == 1
    assert pipeline.main(["compare", str(codes), "--out", str(tmp_path / "c"), "--classifiers", "softmax",
                          "--layers", "block4", "--max-iter", "7", "--cv", "0", "--quiet"]) == 0
    assert load_model(tmp_path / "c" / "softmax__block4")["pipeline"].named_steps["clf"].max_iter == 7
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "r0"), "--max-iter", "0"]) == 2
    assert "max_iter must be a positive" in capsys.readouterr().err


def test_too_many_folds_is_one_clean_line_and_cv0_says_fixed(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "r"), "--cv", "50", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "cnncodes classify: warning: cross-validation reduced from 50 to" in err and ".py" not in err
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "r0"), "--cv", "0", "--C", "1",
                          "--quiet"]) == 0
    text = (tmp_path / "r0" / "report.txt").read_text()
    assert "(C=1, fixed, no cross-validation)" in text and "no-fold" not in text


def test_report_text_shows_training_and_resampled_counts(tmp_path):
    report = classify_codes(make_codes(tmp_path / "c.h5"), tmp_path / "r", sampling="over", C=1.0, cv=0,
                            progress=False)
    text = (tmp_path / "r" / "report.txt").read_text()
    train = ", ".join(f"{k} {v}" for k, v in report["train_class_counts"].items())
    resampled = ", ".join(f"{k} {v}" for k, v in report["resampled_class_counts"].items())
    assert f"train counts:      {train}\n" in text
    assert f"resampled counts:  {resampled} (what the classifier was fitted on)" in text
    assert len(set(report["resampled_class_counts"].values())) == 1 != len(set(report["train_class_counts"].values()))


@pytest.mark.parametrize("counts,target", [((40, 160), 100), ((10, 50, 90), 50), ((7, 30, 31, 100), 30)])
def test_hybrid_sampling_ends_every_class_at_the_median(counts, target):
    from cnncodes.classify.models import make_samplers

    y = np.repeat(np.arange(len(counts)), counts)
    X = np.arange(len(y), dtype=float)[:, None]
    (_, sampler), = make_samplers("hybrid", seed=0)
    _, y_res = sampler.fit_resample(X, y)
    assert np.bincount(y_res).tolist() == [target] * len(counts)


def test_hybrid_report_counts_meet_at_the_median(tmp_path):
    from cnncodes.classify import classify_codes

    codes = make_codes(tmp_path / "codes.h5", n_per_class=(20, 80), class_names=("NORMAL", "PNEUMONIA"),
                       with_split=False)
    report = classify_codes(codes, tmp_path / "out", classifier="svm", sampling="hybrid", C=1.0, cv=0,
                            test_fraction=0.5, progress=False)
    assert report["train_class_counts"] == {"NORMAL": 10, "PNEUMONIA": 40}
    assert report["resampled_class_counts"] == {"NORMAL": 25, "PNEUMONIA": 25}


def test_class_missing_from_one_side_of_the_split_is_a_note(tmp_path):
    from cnncodes.classify import classify_codes
    from codes_fixtures import imbalanced_codes

    codes, y = imbalanced_codes((30, 30, 10))
    split = np.where(y == 2, "test", np.where(np.arange(len(y)) % 3 == 0, "test", "train"))
    path = write_codes_file(tmp_path / "codes.h5", codes, y, ["a", "b", "c"], split=list(split))
    report = classify_codes(path, tmp_path / "out", classifier="svm", C=1.0, cv=0, progress=False)
    assert any("class c has no training rows" in n for n in report["notes"])
    assert "class c has no training rows" in (tmp_path / "out" / "report.txt").read_text()


def test_test_file_holding_training_images_is_refused(tmp_path, capsys):
    from cnncodes.classify import classify_codes
    from codes_fixtures import imbalanced_codes

    codes, y = imbalanced_codes((20, 20))
    train = write_codes_file(tmp_path / "train.h5", codes, y, ["a", "b"])
    other, y_other = imbalanced_codes((10, 10), seed=3)
    mixed = {tap: np.vstack([other[tap], codes[tap][:3]]) for tap in codes}  # 3 training images slipped in
    test = write_codes_file(tmp_path / "test.h5", mixed, np.r_[y_other, y[:3]], ["a", "b"],
                            paths=[f"new/{i}.png" for i in range(20)] + ["img/00000.png", "img/00001.png",
                                                                         "img/00002.png"])
    with pytest.raises(ValueError, match=r"holds 3 of the 40 training images .*first: img/00000.png"):
        classify_codes(train, tmp_path / "out", test=test, C=1.0, cv=0, progress=False)
    assert pipeline.main(["compare", str(train), "--out", str(tmp_path / "cmp"), "--test", str(test),
                          "--classifiers", "svm", "--cv", "0", "--C", "1", "--quiet"]) == 2
    assert "overstates accuracy" in capsys.readouterr().err


def test_test_file_of_other_images_is_accepted(tmp_path):
    from cnncodes.classify import classify_codes

    train = make_codes(tmp_path / "train.h5", with_split=False)
    test = make_codes(tmp_path / "test.h5", with_split=False, seed=5)  # same paths and sizes, other codes
    report = classify_codes(train, tmp_path / "out", test=test, C=1.0, cv=0, progress=False)
    assert report["n_test"] == 102


def test_api_refuses_bad_cv_and_notes_no_cv(tmp_path):
    from cnncodes.classify import classify_codes

    codes = make_codes(tmp_path / "codes.h5")
    with pytest.raises(ValueError, match="cv must be 0 .* got 1"):
        classify_codes(codes, tmp_path / "a", cv=1, progress=False)
    with pytest.raises(ValueError, match="C must be a positive number"):
        compare(codes, tmp_path / "b", classifiers=("svm",), C=-1.0, cv=0, progress=False)
    report = classify_codes(codes, tmp_path / "c", cv=0, progress=False)
    assert any("no cross-validation (cv=0)" in n for n in report["notes"]) and report["hyperparameter"] == "C=1"
