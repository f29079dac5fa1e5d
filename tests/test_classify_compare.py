"""compare: every (classifier, layer, sampling) on the same codes, ranked best first by CV on the training split,
in Markdown and CSV; one layer syntax everywhere."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from codes_fixtures import make_codes, write_codes_file

from cnncodes import pipeline
from cnncodes.classify import compare

CLASSIFIERS = ("svm", "softmax", "knn", "rbf_svm")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    codes = make_codes(root / "codes.h5")
    out = root / "out"
    return out, compare(codes, out, classifiers=CLASSIFIERS, layers=["block4", "penultimate"], cv=2,
                        progress=False)


def test_every_combination_once(result):
    _, rows = result
    assert sorted((r["classifier"], r["layers"]) for r in rows) == sorted(
        (c, layer) for c in CLASSIFIERS for layer in ("block4", "penultimate"))
    assert [r["rank"] for r in rows] == list(range(1, 9))


def test_ranked_by_cv_score_on_the_training_split(result):
    _, rows = result
    keys = [r["cv_score"] for r in rows]
    assert keys == sorted(keys, reverse=True)


def test_rows_agree_with_each_sub_report(result):
    out, rows = result
    for row in rows:
        report = json.loads((out / row["report_dir"] / "report.json").read_text())
        assert report["classifier"] == row["classifier"] and "+".join(report["layers"]) == row["layers"]
        for key in ("balanced_accuracy", "macro_f1", "accuracy", "cv_score", "fit_time_s", "hyperparameter"):
            assert report[key] == row[key], key
        assert (out / row["report_dir"] / "model.joblib.sha256").is_file()
        assert row["fit_time_s"] > 0
    knn = [r for r in rows if r["classifier"] == "knn"]
    assert all(r["hyperparameter"].startswith("n_neighbors=") for r in knn)
    assert all(r["hyperparameter"].startswith("C=") for r in rows if r["classifier"] != "knn")


def test_csv_and_markdown(result):
    out, rows = result
    with open(out / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["classifier"], t["layers"]) for t in table] == [(r["classifier"], r["layers"]) for r in rows]
    assert [float(t["balanced_accuracy"]) for t in table] == pytest.approx([r["balanced_accuracy"] for r in rows])
    assert {"balanced_accuracy", "macro_f1", "accuracy", "fit_time_s", "hyperparameter"} <= set(table[0])
    md = (out / "compare.md").read_text().splitlines()
    body = [line for line in md if line.startswith("| ") and not line.startswith("| #")]
    assert len(body) == len(rows)
    for line, row in zip(body, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [str(row["rank"]), row["classifier"], row["layers"]]
        assert cells[3] == f"{row['cv_score']:.4f}" and cells[4] == f"{row['balanced_accuracy']:.4f}"
        assert cells[-1] == row["hyperparameter"]


def test_by_default_compare_runs_linear_knn_and_nonlinear_classifiers_from_the_api_and_the_cli(tmp_path):
    codes = make_codes(tmp_path / "codes.h5")
    api = {r["classifier"] for r in compare(codes, tmp_path / "api", layers=["block4"], cv=0, progress=False)}
    assert pipeline.main(["compare", str(codes), "--out", str(tmp_path / "cli"), "--layers", "block4", "--cv", "0",
                          "--quiet"]) == 0
    with open(tmp_path / "cli" / "compare.csv", newline="") as fh:
        assert {r["classifier"] for r in csv.DictReader(fh)} == api
    assert {"svm", "softmax", "knn"} <= api
    assert {"rbf_svm", "forest"} & api


def test_concatenated_layer_and_default_layers(tmp_path):
    codes = make_codes(tmp_path / "codes.h5")
    rows = compare(codes, tmp_path / "a", classifiers=("svm",), layers=["block4+penultimate"], C=1.0, cv=0,
                   progress=False)
    assert [r["layers"] for r in rows] == ["block4+penultimate"]
    assert rows[0]["cv_score"] is None
    rows = compare(codes, tmp_path / "b", classifiers=("svm",), C=1.0, cv=0, progress=False)
    assert sorted(r["layers"] for r in rows) == ["block4", "penultimate"]  # default: every tap on its own


def test_unknown_classifier_fails_before_any_work(tmp_path):
    codes = make_codes(tmp_path / "codes.h5")
    with pytest.raises(ValueError, match="unknown classifier 'boosted'"):
        compare(codes, tmp_path / "out", classifiers=("svm", "boosted"), progress=False)
    assert not (tmp_path / "out").exists()


def test_no_minority_recall_when_classes_tie_for_the_fewest_rows(tmp_path):
    codes = make_codes(tmp_path / "codes.h5", n_per_class=(30, 30))
    rows = compare(codes, tmp_path / "out", classifiers=("softmax",), layers=["penultimate"], cv=2, progress=False)
    assert rows[0]["minority_class"] is None and rows[0]["minority_recall"] is None
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "inority recall" not in md
    with open(tmp_path / "out" / "compare.csv", newline="") as f:
        assert next(csv.DictReader(f))["minority_class"] == ""  # the CSV keeps its columns


def test_ties_go_to_the_simpler_configuration_never_the_fit_time():
    # issue 22 item 9: ties were broken by fit time, so identical runs picked none / over / none
    from cnncodes.classify.compare import rank_rows

    def row(classifier, layers, sampling, dim, fit_time, cv=0.9):
        return {"classifier": classifier, "layers": layers, "sampling": sampling, "dim": dim, "fit_time_s": fit_time,
                "cv_score": cv}
    rows = [row("svm", "block4", "over", 24, 0.1), row("svm", "block4+penultimate", "none", 40, 0.2),
            row("svm", "penultimate", "none", 16, 0.9), row("softmax", "block4", "none", 24, 0.3),
            row("svm", "block4", "none", 24, 0.05, cv=0.9 + 1e-15), row("knn", "block4", "none", 24, 0.01, cv=None)]
    for order in (rows, rows[::-1]):
        ranked = [dict(r) for r in order]
        rank_rows(ranked)
        assert [(r["classifier"], r["layers"], r["sampling"]) for r in ranked] == [
            ("svm", "penultimate", "none"), ("softmax", "block4", "none"), ("svm", "block4", "none"),
            ("svm", "block4+penultimate", "none"), ("svm", "block4", "over"), ("knn", "block4", "none")]
        assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5, None]


def test_candidates_are_cross_validated_on_the_same_rows(tmp_path, monkeypatch):
    # issue 22 item 10: svm's CV used at most 5,000 training rows, softmax's up to 20,000
    from dataclasses import replace

    from cnncodes.classify import models

    monkeypatch.setitem(models.CLASSIFIERS, "svm", replace(models.CLASSIFIERS["svm"], cv_max_rows=40))
    codes = make_codes(tmp_path / "codes.h5")
    rows = compare(codes, tmp_path / "out", classifiers=("svm", "softmax"), layers="block4", cv=2, progress=False)
    for row in rows:
        notes = json.loads((tmp_path / "out" / row["report_dir"] / "report.json").read_text())["notes"]
        assert any(f"stratified sample of 40 of {row['n_train']} training rows" in n for n in notes), row["classifier"]


def _two_layer_trap(path, n: int = 40, seed: int = 0):
    """Layer "signal" separates the classes on train but is inverted on test; layer "noise" is noise.

    Ranked by held-out score, "noise" wins; ranked by CV on the training split, "signal" does.
    """
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    split = np.array(["train", "test"] * n, dtype=object)
    signal = np.zeros((2 * n, 4))
    shown = np.where(split == "train", y, 1 - y)  # the test rows carry the other class's pattern
    signal[np.arange(2 * n), shown] = 1.0
    signal += rng.uniform(0, 0.1, signal.shape)
    noise = rng.uniform(0, 1, (2 * n, 4))
    return write_codes_file(path, {"signal": signal, "noise": noise}, y, ["a", "b"], split=list(split))


def test_compare_ranks_by_cv_on_training_split_not_held_out(tmp_path):
    codes = _two_layer_trap(tmp_path / "codes.h5")
    rows = compare(codes, tmp_path / "out", classifiers=("svm",), layers=["noise", "signal"], cv=3, progress=False)
    assert [r["layers"] for r in rows] == ["signal", "noise"]
    assert rows[0]["cv_score"] > rows[1]["cv_score"] and rows[0]["balanced_accuracy"] < rows[1]["balanced_accuracy"]
    assert [r["rank"] for r in rows] == [1, 2]
    header = (tmp_path / "out" / "compare.md").read_text().splitlines()[0]
    assert "ranked by CV balanced accuracy on the training split" in header and "not used to choose" in header
    with open(tmp_path / "out" / "compare.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {"balanced_accuracy", "macro_f1", "accuracy", "cv_score", "rank"} <= set(table[0])


def test_compare_without_cv_ranks_nothing(tmp_path):
    codes = make_codes(tmp_path / "codes.h5")
    rows = compare(codes, tmp_path / "out", classifiers=("svm", "softmax"), layers=["block4"], C=1.0, cv=0,
                   progress=False)
    assert [r["rank"] for r in rows] == [None, None] and [r["classifier"] for r in rows] == ["softmax", "svm"]
    assert "not ranked" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_checks_every_layer_before_training(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")
    out = tmp_path / "out"
    assert pipeline.main(["compare", str(codes), "--out", str(out), "--layers", "block4,fc7", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no layer fc7" in err and "available layers: block4, penultimate" in err
    assert not out.exists()  # nothing trained, nothing written


def test_layer_sets_are_written_one_way_in_compare_classify_and_the_cli(tmp_path):
    from cnncodes.classify import classify_codes

    codes = make_codes(tmp_path / "codes.h5")
    rows = compare(codes, tmp_path / "cmp", classifiers=("svm",), layers="block4, block4 + penultimate", C=1.0,
                   cv=0, progress=False)
    assert sorted(r["layers"] for r in rows) == ["block4", "block4+penultimate"]
    for i, layers in enumerate(["block4+penultimate", ["block4", "penultimate"], ["block4+ penultimate"]]):
        report = classify_codes(codes, tmp_path / f"c{i}", layers=layers, C=1.0, cv=0, progress=False)
        assert report["layers"] == ["block4", "penultimate"]
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "cli"), "--layer", "block4+penultimate",
                          "--C", "1", "--cv", "0", "--quiet"]) == 0
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["layers"] == ["block4", "penultimate"]


def test_compare_runs_several_samplings_and_reports_minority_recall(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")  # cat 60, dog 30, bird 12: bird is the minority
    out = tmp_path / "out"
    assert pipeline.main(["compare", str(codes), "--out", str(out), "--classifiers", "svm", "--layers", "block4",
                          "--sampling", "none, over,hybrid", "--cv", "2", "--quiet"]) == 0
    with open(out / "compare.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["sampling"] for r in rows) == ["hybrid", "none", "over"]
    assert {r["report_dir"] for r in rows} == {f"svm__block4__{m}" for m in ("none", "over", "hybrid")}
    for row in rows:
        report = json.loads((out / row["report_dir"] / "report.json").read_text())
        assert report["sampling"] == row["sampling"] and row["minority_class"] == "bird"
        assert float(row["minority_recall"]) == pytest.approx(report["per_class"]["bird"]["recall"])
    md = (out / "compare.md").read_text()
    assert "Minority recall: held-out recall of bird, the class with the fewest training rows" in md
    assert "| sampling |" in md
    assert "pick: svm on block4 with sampling" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pipeline.main(["compare", str(codes), "--out", str(tmp_path / "x"), "--sampling", "none,smote"])
    assert "argument --sampling: must be none, over, under, hybrid" in capsys.readouterr().err
