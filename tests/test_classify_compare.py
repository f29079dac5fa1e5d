"""compare: every (classifier, layer) on the same codes, ranked best first, in Markdown and CSV."""
from __future__ import annotations

import csv
import json

import pytest
from codes_fixtures import make_codes

from classify import compare
from classify.compare import DEFAULT_CLASSIFIERS

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


def test_defaults_include_linear_knn_and_nonlinear():
    assert {"svm", "softmax", "knn"} <= set(DEFAULT_CLASSIFIERS)
    assert {"rbf_svm", "forest"} & set(DEFAULT_CLASSIFIERS)


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
