"""End to end through the command line: run, classify on real codes files, predict on new images."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from codes_fixtures import binary_codes
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

import cnncodes
from cnncodes import pipeline
from cnncodes.classify import load_model
from conftest import FAST, make_tree, write_image
from cnncodes.extract import open_codes


@pytest.fixture
def trained(tmp_path):
    """A split image tree, its codes file and a linear SVM trained on it, all through the CLI."""
    images = make_tree(tmp_path / "images", classes=("cat", "dog", "owl"), per_class=8, splits=("train", "test"))
    run = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(run), *FAST, "--workers", "0", "--classifiers", "svm",
                          "--cv", "3"]) == 0
    return images, run


def test_run_classifies_and_reports_match_sklearn_metrics(trained):
    images, run = trained
    report = json.loads((run / "classify" / "report.json").read_text())
    cf = open_codes(run / "codes.h5")
    test = np.array([s == "test" for s in cf.rows.split])
    bundle = load_model(run / "classify")
    y_true = cf.rows.labels[test]
    y_pred = bundle["pipeline"].predict(cf.codes["penultimate"][test])
    assert report["n_test"] == int(test.sum()) == 24 and report["n_train"] == 24
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert report["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    assert report["labels"] == ["cat", "dog", "owl"] and report["C"] is not None
    assert report["recipe"]["backbone"] == "mobilenet_v2" and report["recipe"]["taps"][0]["name"] == "penultimate"
    for name in ("report.txt", "confusion.csv", "confusion.png", "model.joblib", "model.joblib.sha256"):
        assert (run / "classify" / name).is_file(), name


def test_run_with_two_layers_compares_them(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=8, splits=("train", "test"))
    out = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(out), *FAST, "--workers", "0", "--layer", "block4",
                          "--layer", "penultimate", "--classifiers", "svm,softmax", "--cv", "3"]) == 0
    printed = capsys.readouterr().out
    with open(out / "compare" / "compare.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["classifier"], r["layers"]) for r in rows} == {
        ("svm", "block4"), ("softmax", "block4"), ("svm", "penultimate"), ("softmax", "penultimate")}
    scores = [float(r["cv_score"]) for r in rows]  # ranked by CV on the training split, not the held-out score
    assert scores == sorted(scores, reverse=True)
    assert "| 1 |" in printed and "pick:" in printed
    assert "best CV balanced accuracy on the training split" in printed and "honest estimate" in printed


def test_predict_new_images_lists_failures_and_scores_every_class(trained, tmp_path, capsys):
    _, run = trained
    new = make_tree(tmp_path / "new", classes=("x",), per_class=3, seed=7)
    (new / "x" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "preds.csv"
    assert pipeline.main(["predict", str(run / "classify"), str(new), "-o", str(out), "--workers", "0",
                          "--quiet"]) == 0
    assert "1 image(s) could not be predicted" in capsys.readouterr().out
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["path", "predicted", "score_cat", "score_dog", "score_owl", "error"]
    broken = next(r for r in rows if r["path"] == "x/broken.png")
    assert broken["predicted"] == "" and broken["error"]
    good = [r for r in rows if r is not broken]
    assert len(good) == 3 and all(r["predicted"] in ("cat", "dog", "owl") and not r["error"] for r in good)
    for r in good:  # the predicted class has the highest score
        scores = {c: float(r[f"score_{c}"]) for c in ("cat", "dog", "owl")}
        assert max(scores, key=scores.get) == r["predicted"]


def test_predict_refuses_codes_or_weights_of_another_recipe(trained, tmp_path, capsys):
    images, run = trained
    other = tmp_path / "other.h5"
    assert pipeline.main(["extract", str(images), "-o", str(other), *FAST[:-5], "--resize", "80", "--crop", "64",
                          "--weights", "random", "--workers", "0", "--quiet"]) == 0
    assert pipeline.main(["predict", str(run / "classify"), str(other), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "preprocess" in err and '"resize": 80' in err
    # the model was trained on untrained-network codes; the embedded ImageNet weights are another recipe
    assert pipeline.main(["predict", str(run / "classify"), str(images), "-o", str(tmp_path / "p.csv"),
                          "--weights", str(_embedded()), "--quiet"]) == 2
    assert "weights_sha256" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def _embedded():
    from cnncodes.extract.weights import embedded_checkpoint

    return embedded_checkpoint("mobilenet_v2")


def test_classify_errors_are_clear(tmp_path, capsys):
    images = make_tree(tmp_path / "one", classes=("only",), per_class=4)
    codes = tmp_path / "one.h5"
    assert pipeline.main(["extract", str(images), "-o", str(codes), *FAST, "--workers", "0"]) == 0
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "r")]) == 2
    assert "class" in capsys.readouterr().err
    assert pipeline.main(["classify", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")]) == 2
    assert "no such codes file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["extract", "predict", "run"])
def test_help_lists_the_environment_variables_the_code_reads(command, capsys):
    import re
    from pathlib import Path

    with pytest.raises(SystemExit):
        pipeline.main([command, "--help"])
    listed = re.findall(r"^  ([A-Z_]+)", capsys.readouterr().out.split("environment:")[1], re.M)
    source = "".join(p.read_text() for p in (Path(pipeline.__file__).parent / "extract").glob("*.py"))
    assert "CNNCODES_CACHE_DIR" in listed and "CNNCODES_OFFLINE" in listed
    assert all(name in source for name in listed), listed


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_calibrated_run_predicts_with_a_threshold_from_the_command_line(tmp_path, capsys):
    train, _, _ = binary_codes(tmp_path)
    run = tmp_path / "run"
    assert pipeline.main(["classify", str(train), "--out", str(run), "--calibrate", "--cv", "0", "--C", "1",
                          "--quiet"]) == 0
    assert "sensitivity:" in capsys.readouterr().out
    out = tmp_path / "p.csv"
    assert pipeline.main(["predict", str(run), str(train), "-o", str(out), "--threshold", "0.3"]) == 0
    assert "threshold: yes where prob_yes >= 0.3" in capsys.readouterr().out
    rows = _read(out)
    assert [r["predicted"] for r in rows] == ["yes" if float(r["prob_yes"]) >= 0.3 else "no" for r in rows]


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
    from cnncodes.extract import open_codes

    cf = open_codes(out)
    assert sorted(cf.rows.paths) == ["test/dog/img_003.png", "train/cat/img_000.png"]
    assert cf.meta["image_root"] == str(images.resolve())


def test_version_is_printed_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom cnncodes import pipeline\ntry:\n    pipeline.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pipeline.__file__.rsplit("/", 1)[0], check=True)
    assert done.stdout.splitlines() == [f"cnncodes {cnncodes.__version__}", "torch not loaded"]


@pytest.mark.parametrize("option, message", [(["--classifiers", "svm,logreg"], "unknown classifier 'logreg'"),
                                             (["--layer", "fc7"], "mobilenet_v2 has no layer 'fc7'")])
def test_run_checks_classifier_and_layer_names_before_extracting(tmp_path, capsys, option, message):
    images = make_tree(tmp_path / "images", per_class=2)
    out = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(out), *FAST, *option]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "codes.h5").exists()


def test_run_layer_values_are_runs_and_plus_concatenates(tmp_path):
    images = make_tree(tmp_path / "images", per_class=4, splits=("train", "test"))
    out = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(out), *FAST, "--workers", "0", "--layer",
                          "block4, block4+penultimate", "--classifiers", "svm", "--cv", "2"]) == 0
    with open(out / "compare" / "compare.csv", newline="") as fh:
        assert sorted(r["layers"] for r in csv.DictReader(fh)) == ["block4", "block4+penultimate"]


def test_run_has_the_update_and_overwrite_it_suggests(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=4, splits=("train", "test"))
    out = tmp_path / "run"
    common = ["run", str(images), "--out", str(out), *FAST, "--workers", "0", "--classifiers", "svm", "--cv", "2"]
    assert pipeline.main(common) == 0
    write_image(images / "train" / "cat" / "new.png", np.random.default_rng(3))  # one more image
    capsys.readouterr()
    assert pipeline.main(common) == 2
    err = capsys.readouterr().err
    assert "--update" in err
    assert pipeline.main([*common, "--update"]) == 0
    assert "1 extracted" in capsys.readouterr().out
    assert pipeline.main([*common, "--overwrite", "--layer", "block4"]) == 0
    assert json.loads((out / "classify" / "report.json").read_text())["layers"] == ["block4"]
