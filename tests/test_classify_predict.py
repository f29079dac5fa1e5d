"""model.joblib + sha256 sidecar, and predict_codes end to end on codes files: probability columns, thresholds,
labelled input scored, and predict's messages."""
from __future__ import annotations

import csv
import hashlib
import pickle

import numpy as np
import pytest
from codes_fixtures import binary_codes, imbalanced_codes, make_codes, recipe, write_codes_file
from sklearn.metrics import balanced_accuracy_score

from cnncodes import pipeline
from cnncodes.classify import classify_codes, load_model, predict_codes
from cnncodes.extract.codesfile import RecipeMismatch

NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    codes, y = imbalanced_codes()
    train = write_codes_file(root / "train.h5", codes, y, NAMES)
    run = root / "run"
    classify_codes(train, run, layers="penultimate", C=1.0, cv=0, test_fraction=0.3, progress=False)
    return run


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _new_images(path, n=12, failed=(3,), rec=None, **kwargs):
    codes, _ = imbalanced_codes((6, 4, 2), seed=7)
    ok = np.ones(n, bool)
    ok[list(failed)] = False
    errors = ["" if k else "cannot identify image file 'x.jpg'" for k in ok]
    return write_codes_file(path, codes, np.full(n, -1), [], ok=ok, errors=errors, rec=rec,
                            paths=[f"new/{i}.jpg" for i in range(n)], **kwargs), codes


# --- model file -----------------------------------------------------------------------------------

def test_sidecar_written_and_checked(trained):
    model = trained / "model.joblib"
    digest = (trained / "model.joblib.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(model.read_bytes()).hexdigest()
    by_dir, by_file = load_model(trained), load_model(model)
    assert by_dir["layers"] == by_file["layers"] == ["penultimate"]
    assert set(by_dir) >= {"pipeline", "class_names", "layers", "recipe", "settings"}
    assert by_dir["settings"]["classifier"] == "svm" and by_dir["class_names"] == NAMES


def test_tampered_model_refused_before_unpickling(trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.joblib.sha256").write_text((trained / "model.joblib.sha256").read_text())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "model.joblib").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_model(run)
    assert not marker.exists()


def test_modified_byte_refused(trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    data = bytearray((trained / "model.joblib").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "model.joblib").write_bytes(bytes(data))
    (run / "model.joblib.sha256").write_text((trained / "model.joblib.sha256").read_text())
    with pytest.raises(ValueError, match="checksum"):
        load_model(run)


def test_missing_sidecar_or_model_refused(trained, tmp_path):
    (tmp_path / "model.joblib").write_bytes((trained / "model.joblib").read_bytes())
    with pytest.raises(ValueError, match="no checksum file"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="no such model"):
        load_model(tmp_path / "elsewhere")


# --- predict --------------------------------------------------------------------------------------

def test_predict_csv_end_to_end(trained, tmp_path):
    path, codes = _new_images(tmp_path / "new.h5")
    summary = predict_codes(trained, path, tmp_path / "out" / "pred.csv")
    rows = _read(tmp_path / "out" / "pred.csv")
    with open(tmp_path / "out" / "pred.csv") as f:
        header = f.readline().strip().split(",")
    assert header == ["path", "predicted", "score_cat", "score_dog", "score_bird", "error"]
    assert [r["path"] for r in rows] == [f"new/{i}.jpg" for i in range(12)]
    assert summary["n_rows"] == 12 and summary["n_predicted"] == 11 and summary["n_failed"] == 1

    failed = rows[3]
    assert failed["predicted"] == "" and failed["score_cat"] == "" and "cannot identify" in failed["error"]

    pipe = load_model(trained)["pipeline"]
    good = np.arange(12) != 3
    X = codes["penultimate"][good].astype(np.float32)
    expected = [NAMES[i] for i in pipe.predict(X)]
    assert [r["predicted"] for i, r in enumerate(rows) if i != 3] == expected
    scores = np.array([[float(r[f"score_{c}"]) for c in NAMES] for i, r in enumerate(rows) if i != 3])
    assert scores == pytest.approx(pipe.decision_function(X), rel=1e-4, abs=1e-5)
    assert [NAMES[i] for i in scores.argmax(axis=1)] == expected
    assert all(r["error"] == "" for i, r in enumerate(rows) if i != 3)
    assert summary["predicted_counts"] == {c: expected.count(c) for c in set(expected)}


def test_predict_recipe_mismatch_refused(trained, tmp_path):
    other = recipe({"block4": 24, "penultimate": 16}, sha="f" * 64)
    path, _ = _new_images(tmp_path / "new.h5", rec=other)
    with pytest.raises(RecipeMismatch, match="weights_sha256"):
        predict_codes(trained, path, tmp_path / "pred.csv")
    assert not (tmp_path / "pred.csv").exists()


def test_predict_accepts_file_with_only_the_model_taps(trained, tmp_path):
    codes, _ = imbalanced_codes((6, 4, 2), seed=7)
    full = recipe({"block4": 24, "penultimate": 16})
    only = {**full, "taps": [t for t in full["taps"] if t["name"] == "penultimate"]}
    path = write_codes_file(tmp_path / "one_tap.h5", {"penultimate": codes["penultimate"]}, np.full(12, -1), [],
                            rec=only)
    assert predict_codes(trained, path, tmp_path / "pred.csv")["n_predicted"] == 12
    other_pool = {**only, "taps": [{**only["taps"][0], "pool": "max"}]}
    path2 = write_codes_file(tmp_path / "max.h5", {"penultimate": codes["penultimate"]}, np.full(12, -1), [],
                             rec=other_pool)
    with pytest.raises(RecipeMismatch, match="taps"):
        predict_codes(trained, path2, tmp_path / "pred2.csv")


def test_predict_with_probabilities_and_nonfinite_row(tmp_path):
    codes, y = imbalanced_codes()
    train = write_codes_file(tmp_path / "train.h5", codes, y, NAMES)
    classify_codes(train, tmp_path / "run", classifier="knn", cv=0, test_fraction=0.3, progress=False)
    new_codes, _ = imbalanced_codes((6, 4, 2), seed=7)
    new_codes["block4"][5, 0] = np.inf  # an ok row with broken codes is reported, not fatal
    path = write_codes_file(tmp_path / "new.h5", new_codes, np.full(12, -1), [])
    summary = predict_codes(tmp_path / "run", path, tmp_path / "pred.csv")
    rows = _read(tmp_path / "pred.csv")
    assert summary["score"] == "predict_proba" and summary["n_failed"] == 1
    assert rows[5]["predicted"] == "" and "NaN or infinite" in rows[5]["error"]
    sums = [sum(float(r[f"score_{c}"]) for c in NAMES) for i, r in enumerate(rows) if i != 5]
    assert sums == pytest.approx([1.0] * 11)


def test_predict_binary_scores_two_columns(tmp_path):
    codes, y = imbalanced_codes((40, 20))
    train = write_codes_file(tmp_path / "train.h5", codes, y, ["no", "yes"])
    classify_codes(train, tmp_path / "run", C=1.0, cv=0, test_fraction=0.3, progress=False)
    summary = predict_codes(tmp_path / "run", train, tmp_path / "pred.csv")
    rows = _read(tmp_path / "pred.csv")
    assert list(rows[0]) == ["path", "predicted", "true", "score_no", "score_yes", "error"]  # a labelled file
    for r in rows:
        assert float(r["score_no"]) == pytest.approx(-float(r["score_yes"]))
        assert r["predicted"] == ("yes" if float(r["score_yes"]) > 0 else "no")
    assert summary["n_predicted"] == 60


def test_predict_missing_layer_lists_available(trained, tmp_path):
    codes, _ = imbalanced_codes((6, 4, 2), seed=7)
    rec = recipe({"block4": 24, "penultimate": 16})
    path = write_codes_file(tmp_path / "b4.h5", {"block4": codes["block4"]}, np.full(12, -1), [], rec=rec)
    with pytest.raises(ValueError, match="has no penultimate; it has block4"):
        predict_codes(trained, path, tmp_path / "pred.csv")


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


def test_threshold_on_the_positive_class_probability_decides_the_prediction(tmp_path):
    train, _, _ = binary_codes(tmp_path)
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
    train, _, _ = binary_codes(tmp_path)
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


def test_a_model_saved_under_the_old_top_level_module_names_still_loads(tmp_path):
    """0.1 installed the stages as top-level packages: its model.joblib pickles classify.models.* classes."""
    import pickle
    import sys

    import joblib
    import numpy as np

    from cnncodes.classify import models
    from cnncodes.classify.model_io import load_model, model_files

    step = models.PowerNormalizer()
    bundle = {"pipeline": step.fit(np.ones((3, 2))), "class_names": ["a", "b"]}
    sys.modules["classify"], sys.modules["classify.models"] = sys.modules["cnncodes.classify"], models
    models.PowerNormalizer.__module__ = "classify.models"
    try:
        files = model_files(bundle)
    finally:
        models.PowerNormalizer.__module__ = "cnncodes.classify.models"
        del sys.modules["classify"], sys.modules["classify.models"]
    assert b"classify.models" in files["model.joblib"] and b"cnncodes.classify" not in files["model.joblib"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    loaded = load_model(tmp_path)
    assert type(loaded["pipeline"]) is models.PowerNormalizer and "classify" not in sys.modules
    assert pickle.loads(pickle.dumps(loaded["pipeline"])).__class__ is models.PowerNormalizer
