"""Issue 14 (a new user's findings): probabilities and thresholds, predict on labelled data, single images
and several paths, predict's messages, smaller surprises, report counts and the Python API."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from codes_fixtures import imbalanced_codes, make_codes, recipe, split_column, write_codes_file
from conftest import FAST, make_tree, write_image
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

import pipeline
from classify import classify_codes, load_model, predict_codes

NAMES = ["cat", "dog", "bird"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _binary(tmp_path, name="train.h5", n=(40, 20)):
    codes, y = imbalanced_codes(n, sep=0.8)
    return write_codes_file(tmp_path / name, codes, y, ["no", "yes"], split=split_column(y)), codes, y


# --- 16: probabilities, calibration, thresholds, binary report ----------------------------------------

def test_predict_writes_probability_columns_for_softmax(tmp_path):
    train = make_codes(tmp_path / "train.h5")
    classify_codes(train, tmp_path / "run", classifier="softmax", C=1.0, cv=0, progress=False)
    new, _ = imbalanced_codes((6, 4, 2), seed=7)
    path = write_codes_file(tmp_path / "new.h5", new, np.full(12, -1), [])
    summary = predict_codes(tmp_path / "run", path, tmp_path / "pred.csv")
    rows = _read(tmp_path / "pred.csv")
    assert list(rows[0]) == ["path", "predicted", *(f"score_{c}" for c in NAMES), *(f"prob_{c}" for c in NAMES),
                             "error"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in NAMES] for r in rows])
    pipe = load_model(tmp_path / "run")["pipeline"]
    assert probs == pytest.approx(pipe.predict_proba(new["block4"].astype(np.float32)), abs=1e-5)
    assert probs.sum(axis=1) == pytest.approx(np.ones(12), abs=1e-5) and summary["probabilities"]


def test_svm_has_no_probabilities_unless_calibrated(tmp_path):
    train = make_codes(tmp_path / "train.h5")
    classify_codes(train, tmp_path / "plain", C=1.0, cv=0, progress=False)
    predict_codes(tmp_path / "plain", train, tmp_path / "plain.csv")
    assert not any(k.startswith("prob_") for k in _read(tmp_path / "plain.csv")[0])

    report = classify_codes(train, tmp_path / "cal", C=1.0, cv=0, calibrate=True, progress=False)
    assert report["calibrated"] and any("sigmoid calibration" in n for n in report["notes"])
    assert "sigmoid-calibrated" in (tmp_path / "cal" / "report.txt").read_text()
    predict_codes(tmp_path / "cal", train, tmp_path / "cal.csv")
    rows = _read(tmp_path / "cal.csv")
    probs = np.array([[float(r[f"prob_{c}"]) for c in NAMES] for r in rows])
    assert probs.sum(axis=1) == pytest.approx(np.ones(len(rows)), abs=1e-5)
    assert [NAMES[i] for i in probs.argmax(axis=1)] == [r["predicted"] for r in rows]


def test_threshold_on_positive_class_probability(tmp_path):
    train, _, _ = _binary(tmp_path)
    classify_codes(train, tmp_path / "run", classifier="softmax", C=1.0, cv=0, progress=False)
    for threshold, positive in ((0.8, None), (0.2, None), (0.7, "no")):
        out = tmp_path / f"p{threshold}{positive}.csv"
        summary = predict_codes(tmp_path / "run", train, out, threshold=threshold, positive=positive)
        pos = positive or "yes"
        neg = "no" if pos == "yes" else "yes"
        rows = _read(out)
        assert [r["predicted"] for r in rows] == [pos if float(r[f"prob_{pos}"]) >= threshold else neg for r in rows]
        assert summary["threshold"] == {"positive_class": pos, "threshold": threshold, "on": f"prob_{pos}"}
    low = [r["predicted"] for r in _read(tmp_path / "p0.2None.csv")]
    high = [r["predicted"] for r in _read(tmp_path / "p0.8None.csv")]
    assert low.count("yes") > high.count("yes")


def test_threshold_on_svm_score_and_bad_thresholds_refused(tmp_path):
    train, _, _ = _binary(tmp_path)
    classify_codes(train, tmp_path / "run", C=1.0, cv=0, progress=False)
    summary = predict_codes(tmp_path / "run", train, tmp_path / "s.csv", threshold=-0.5)
    rows = _read(tmp_path / "s.csv")
    assert summary["threshold"]["on"] == "score_yes"
    assert [r["predicted"] for r in rows] == ["yes" if float(r["score_yes"]) >= -0.5 else "no" for r in rows]
    with pytest.raises(ValueError, match="not a class of the model"):
        predict_codes(tmp_path / "run", train, tmp_path / "x.csv", threshold=0.0, positive="maybe")
    with pytest.raises(ValueError, match="give a threshold"):
        predict_codes(tmp_path / "run", train, tmp_path / "x.csv", positive="yes")
    classify_codes(train, tmp_path / "soft", classifier="softmax", C=1.0, cv=0, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_codes(tmp_path / "soft", train, tmp_path / "x.csv", threshold=2.0)
    three = make_codes(tmp_path / "three.h5")
    classify_codes(three, tmp_path / "three", C=1.0, cv=0, progress=False)
    with pytest.raises(ValueError, match="two-class model"):
        predict_codes(tmp_path / "three", three, tmp_path / "x.csv", threshold=0.5)
    assert not (tmp_path / "x.csv").exists()


def test_binary_report_has_roc_pr_sensitivity_specificity(tmp_path):
    train, codes, y = _binary(tmp_path)
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


def test_cli_threshold_and_calibrate(tmp_path, capsys):
    train, _, _ = _binary(tmp_path)
    run = tmp_path / "run"
    assert pipeline.main(["classify", str(train), "--out", str(run), "--calibrate", "--cv", "0", "--C", "1",
                          "--quiet"]) == 0
    assert "sensitivity:" in capsys.readouterr().out
    out = tmp_path / "p.csv"
    assert pipeline.main(["predict", str(run), str(train), "-o", str(out), "--threshold", "0.3"]) == 0
    assert "threshold: yes where prob_yes >= 0.3" in capsys.readouterr().out
    rows = _read(out)
    assert [r["predicted"] for r in rows] == ["yes" if float(r["prob_yes"]) >= 0.3 else "no" for r in rows]


# --- 18: predict on labelled data ---------------------------------------------------------------------

def test_predict_on_labelled_codes_adds_true_column_and_scores_known_classes(tmp_path):
    train = make_codes(tmp_path / "train.h5")
    classify_codes(train, tmp_path / "run", C=1.0, cv=0, progress=False)
    new, y = imbalanced_codes((6, 4, 2), seed=7)
    y = y.copy()
    y[:2] = 3  # a class the model never saw
    y[2] = -1  # unlabeled
    path = write_codes_file(tmp_path / "new.h5", new, y, ["cat", "dog", "bird", "fox"])
    summary = predict_codes(tmp_path / "run", path, tmp_path / "pred.csv")
    rows = _read(tmp_path / "pred.csv")
    assert list(rows[0])[:3] == ["path", "predicted", "true"]
    names = ["cat", "dog", "bird", "fox"]
    assert [r["true"] for r in rows] == [names[v] if v >= 0 else "" for v in y]
    scored = [r for r in rows if r["true"] in NAMES]
    ev = summary["evaluation"]
    assert ev["n_evaluated"] == len(scored) == 9 and ev["unknown_labels"] == {"fox": 2}
    assert ev["accuracy"] == pytest.approx(np.mean([r["true"] == r["predicted"] for r in scored]))
    assert ev["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score([r["true"] for r in scored], [r["predicted"] for r in scored]))


def test_cli_predict_on_labelled_folder_prints_accuracy(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=6, splits=("train", "test"))
    run = tmp_path / "out"
    assert pipeline.main(["run", str(images), "--out", str(run), *FAST, "--workers", "0", "--classifiers", "svm",
                          "--cv", "0", "--C", "1"]) == 0
    capsys.readouterr()
    assert pipeline.main(["predict", str(run / "classify"), str(images / "test"), "-o", str(tmp_path / "p.csv"),
                          "--workers", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = _read(tmp_path / "p.csv")
    accuracy = np.mean([r["true"] == r["predicted"] for r in rows])
    assert {r["true"] for r in rows} == {"cat", "dog"}
    assert f"12 labelled images of classes the model knows): accuracy {accuracy:.4f}" in printed


# --- 7: single images and several paths -----------------------------------------------------------------

def test_list_images_single_file_and_several_paths(tmp_path):
    from extract.reader import list_images

    images = make_tree(tmp_path / "images", per_class=2)
    one = list_images(images / "cat" / "img_000.png")
    assert one.paths == ["img_000.png"] and one.root == (images / "cat").resolve() and one.labels.tolist() == [-1]

    odd = tmp_path / "photo.data"  # an image without an image extension is recognised by its content
    write_image(odd, np.random.default_rng(1), fmt="PNG")
    assert list_images(odd).paths == ["photo.data"]
    (tmp_path / "notes.dat").write_text("path,label\n")
    with pytest.raises(ValueError, match="neither an image"):
        list_images(tmp_path / "notes.dat")

    several = list_images([images / "dog", images / "cat" / "img_001.png", images / "cat" / "img_001.png"])
    assert several.root == images.resolve()
    assert several.paths == ["cat/img_001.png", "dog/img_000.png", "dog/img_001.png"]
    assert several.labels.tolist() == [-1, -1, -1]  # dog/ alone has no class subfolders: unlabeled
    labelled = list_images([images, tmp_path / "photo.data"])
    assert labelled.root == tmp_path.resolve() and labelled.class_names == ["cat", "dog"]
    assert dict(zip(labelled.paths, labelled.labels.tolist()))["images/dog/img_001.png"] == 1
    assert dict(zip(labelled.paths, labelled.labels.tolist()))["photo.data"] == -1
    manifest = images / "list.csv"
    manifest.write_text("path,label\ncat/img_000.png,cat\n")
    with pytest.raises(ValueError, match="manifest alone"):
        list_images([manifest, images / "dog"])


def test_cli_predict_and_extract_take_one_image_or_several(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=6, splits=("train", "test"))
    run = tmp_path / "out"
    assert pipeline.main(["run", str(images), "--out", str(run), *FAST, "--workers", "0", "--classifiers", "svm",
                          "--cv", "0", "--C", "1"]) == 0
    photo = images / "test" / "dog" / "img_003.png"
    assert pipeline.main(["predict", str(run / "classify"), str(photo), "-o", str(tmp_path / "one.csv"),
                          "--workers", "0", "--quiet"]) == 0
    rows = _read(tmp_path / "one.csv")
    assert [r["path"] for r in rows] == ["img_003.png"] and rows[0]["predicted"] in ("cat", "dog")
    assert pipeline.main(["predict", str(run / "classify"), str(photo), str(images / "test" / "cat"), "-o",
                          str(tmp_path / "two.csv"), "--workers", "0", "--quiet"]) == 0
    rows = _read(tmp_path / "two.csv")
    assert len(rows) == 7 and "dog/img_003.png" in {r["path"] for r in rows}
    capsys.readouterr()
    out = tmp_path / "two.h5"
    assert pipeline.main(["extract", str(photo), str(images / "train" / "cat" / "img_000.png"), "-o", str(out),
                          *FAST, "--workers", "0"]) == 0
    from extract import open_codes

    cf = open_codes(out)
    assert sorted(cf.rows.paths) == ["test/dog/img_003.png", "train/cat/img_000.png"]
    assert cf.meta["image_root"] == str(images.resolve())


# --- 12: predict's messages ------------------------------------------------------------------------------

def test_predict_messages_name_the_layer_the_swap_and_the_compare_runs(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "b4"), "--layer", "block4", "--cv", "0",
                          "--C", "1", "--quiet"]) == 0
    new, _ = imbalanced_codes((6, 4, 2), seed=7)
    only_pen = {**recipe({"block4": 24, "penultimate": 16})}
    only_pen["taps"] = [t for t in only_pen["taps"] if t["name"] == "penultimate"]
    pen = write_codes_file(tmp_path / "pen.h5", {"penultimate": new["penultimate"]}, np.full(12, -1), [],
                           rec=only_pen)
    capsys.readouterr()
    assert pipeline.main(["predict", str(tmp_path / "b4"), str(pen), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "has no block4; it has penultimate" in err and "{" not in err

    assert pipeline.main(["predict", str(codes), str(tmp_path / "b4"), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "is a codes file, not a model" in err and "RUN_DIR" in err and "checksum" not in err

    assert pipeline.main(["compare", str(codes), "--out", str(tmp_path / "cmp"), "--classifiers", "svm,softmax",
                          "--layers", "block4", "--cv", "0", "--C", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert pipeline.main(["predict", str(tmp_path / "cmp"), str(codes), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "subfolders do; pick one" in err
    assert str(tmp_path / "cmp" / "softmax__block4") in err and str(tmp_path / "cmp" / "svm__block4") in err
    assert not (tmp_path / "p.csv").exists()


# --- 19: smaller surprises -------------------------------------------------------------------------------

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


def test_classify_and_compare_refuse_to_replace_a_model_unless_overwrite(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")
    run = tmp_path / "run"
    args = ["classify", str(codes), "--out", str(run), "--cv", "0", "--C", "1", "--quiet"]
    assert pipeline.main(args) == 0
    before = (run / "model.joblib").read_bytes()
    assert pipeline.main([*args, "--classifier", "softmax"]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert (run / "model.joblib").read_bytes() == before
    assert pipeline.main([*args, "--classifier", "softmax", "--overwrite"]) == 0
    assert load_model(run)["settings"]["classifier"] == "softmax"

    cmp_args = ["compare", str(codes), "--out", str(tmp_path / "cmp"), "--classifiers", "svm", "--layers", "block4",
                "--cv", "0", "--quiet"]
    assert pipeline.main(cmp_args) == 0
    assert pipeline.main(cmp_args) == 2
    err = capsys.readouterr().err
    assert "already holds a comparison (" in err and "svm__block4" in err
    assert pipeline.main([*cmp_args, "--overwrite"]) == 0


def test_run_twice_retrains_into_its_own_folders(tmp_path):
    images = make_tree(tmp_path / "images", per_class=6, splits=("train", "test"))
    args = ["run", str(images), "--out", str(tmp_path / "out"), *FAST, "--workers", "0", "--classifiers", "svm",
            "--cv", "0", "--C", "1"]
    assert pipeline.main(args) == 0
    assert pipeline.main(args) == 0


def test_version_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys, pipeline\ntry:\n    pipeline.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pipeline.__file__.rsplit("/", 1)[0], check=True)
    assert done.stdout.splitlines() == [f"cnncodes {pipeline.package_version()}", "torch not loaded"]


# --- 17: class counts in report.txt ----------------------------------------------------------------------

def test_report_text_shows_training_and_resampled_counts(tmp_path):
    report = classify_codes(make_codes(tmp_path / "c.h5"), tmp_path / "r", sampling="over", C=1.0, cv=0,
                            progress=False)
    text = (tmp_path / "r" / "report.txt").read_text()
    train = ", ".join(f"{k} {v}" for k, v in report["train_class_counts"].items())
    resampled = ", ".join(f"{k} {v}" for k, v in report["resampled_class_counts"].items())
    assert f"train counts:      {train}\n" in text
    assert f"resampled counts:  {resampled} (what the classifier was fitted on)" in text
    assert len(set(report["resampled_class_counts"].values())) == 1 != len(set(report["train_class_counts"].values()))


# --- 20: the Python API ----------------------------------------------------------------------------------

FAST_OPTIONS = dict(weights="random", resize=72, crop=64, workers=0, progress=False)


def test_import_cnncodes_loads_neither_torch_nor_sklearn():
    import subprocess
    import sys

    code = ("import sys, cnncodes\nprint(sorted(m for m in ('torch', 'sklearn', 'extract', 'classify') "
            "if m in sys.modules))\nprint(cnncodes.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pipeline.__file__.rsplit("/", 1)[0], check=True)
    assert done.stdout.splitlines()[0] == "[]" and done.stdout.splitlines()[1]


def test_load_codes_as_numpy_by_layers_and_split(tmp_path):
    import cnncodes
    from extract import open_codes

    codes, y = imbalanced_codes()
    ok = np.ones(len(y), bool)
    ok[[0, 5]] = False
    split = split_column(y)
    path = write_codes_file(tmp_path / "c.h5", codes, y, NAMES, split=split, ok=ok)
    train = cnncodes.load_codes(path, layers="block4+penultimate", split="train")
    keep = ok & (np.array(split) == "train")
    cf = open_codes(path)
    assert train.X.dtype == np.float32 and train.X.shape == (keep.sum(), 40)
    assert np.array_equal(train.X, np.hstack([cf.codes["block4"][keep], cf.codes["penultimate"][keep]]))
    assert train.y.tolist() == y[keep].tolist() and train.class_names == NAMES
    assert train.paths == cf.rows.paths[keep].tolist()
    assert cnncodes.load_codes(path).X.shape == (ok.sum(), 24)  # default: the first tap, failed rows left out
    assert len(cnncodes.load_codes(path, include_failed=True).y) == len(y)
    with pytest.raises(ValueError, match="has no fc7; it has block4, penultimate"):
        cnncodes.load_codes(path, layers="fc7")


def test_codes_transformer_in_a_sklearn_pipeline(tmp_path):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    import cnncodes
    from extract import open_codes

    images = make_tree(tmp_path / "images", classes=("cat", "dog"), per_class=5)
    paths = sorted(str(p) for p in images.glob("*/*.png"))[::-1]  # not in the folder's order
    labels = [p.split("/")[-2] for p in paths]
    step = cnncodes.CodesTransformer(layer="block4", weights="random", resize=72, crop=64, workers=0)
    pipe = make_pipeline(step, StandardScaler(), LinearSVC(C=1.0))
    pipe.fit(paths, labels)
    assert clone(pipe).get_params()["codestransformer__layer"] == "block4"

    cnncodes.extract_codes(images, tmp_path / "all.h5", layers=["block4"], **FAST_OPTIONS)
    cf = open_codes(tmp_path / "all.h5")
    row = {p: i for i, p in enumerate(cf.rows.paths)}
    expected = cf.codes["block4"][[row["/".join(p.split("/")[-2:])] for p in paths]]
    X = step.transform(paths)
    assert X.shape == (10, expected.shape[1]) and np.allclose(X, expected, atol=1e-5)
    direct = make_pipeline(StandardScaler(), LinearSVC(C=1.0)).fit(expected, labels)
    assert pipe.predict(paths[:4]).tolist() == direct.predict(expected[:4]).tolist()
    (images / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could not be read.*broken.png"):
        step.transform([str(images / "cat" / "broken.png"), paths[0]])


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's notebook-style example, run as written on a tiny digits-like tree (fast extraction)."""
    import re
    from pathlib import Path

    import cnncodes

    readme = (Path(pipeline.__file__).parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    make_tree(tmp_path / "data" / "digits", classes=("3", "7"), per_class=5, splits=("train", "test"))
    monkeypatch.chdir(tmp_path)
    real = cnncodes.extract_codes
    monkeypatch.setattr(cnncodes, "extract_codes", lambda source, out, **kw: real(source, out, **{**kw, **FAST_OPTIONS}))
    import classify.predict

    predict_images = classify.predict.predict_images
    monkeypatch.setattr(classify.predict, "predict_images",
                        lambda *args, **kw: predict_images(*args, **{**kw, "workers": 0, "progress": False}))
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "api" / "model.joblib").is_file() and (tmp_path / "preds.csv").is_file()
    assert namespace["result"]["evaluation"]["n_evaluated"] == 10
    assert namespace["train"].X.shape[0] == 10 and set(namespace["pipe"].predict(namespace["test_paths"])) <= {"3", "7"}
