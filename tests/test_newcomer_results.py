"""Issue 14 (a new user's findings): wrong or misleading results and dead ends, each pinned by a test."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from codes_fixtures import make_codes, write_codes_file

import pipeline
from classify import compare
from conftest import FAST, make_tree, write_image


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


@pytest.mark.parametrize("counts,target", [((40, 160), 100), ((10, 50, 90), 50), ((7, 30, 31, 100), 30)])
def test_hybrid_sampling_ends_every_class_at_the_median(counts, target):
    from classify.models import make_samplers

    y = np.repeat(np.arange(len(counts)), counts)
    X = np.arange(len(y), dtype=float)[:, None]
    (_, sampler), = make_samplers("hybrid", seed=0)
    _, y_res = sampler.fit_resample(X, y)
    assert np.bincount(y_res).tolist() == [target] * len(counts)


def test_hybrid_report_counts_meet_at_the_median(tmp_path):
    from classify import classify_codes

    codes = make_codes(tmp_path / "codes.h5", n_per_class=(20, 80), class_names=("NORMAL", "PNEUMONIA"),
                       with_split=False)
    report = classify_codes(codes, tmp_path / "out", classifier="svm", sampling="hybrid", C=1.0, cv=0,
                            test_fraction=0.5, progress=False)
    assert report["train_class_counts"] == {"NORMAL": 10, "PNEUMONIA": 40}
    assert report["resampled_class_counts"] == {"NORMAL": 25, "PNEUMONIA": 25}


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_dataset_refuses_a_non_empty_folder(tmp_path, capsys):
    target = make_tree(tmp_path / "images", per_class=1)
    before = _files(target)
    assert pipeline.main(["dataset", "digits", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnncodes dataset: error:") and "--overwrite" in err and "\n" not in err
    assert _files(target) == before


def test_dataset_overwrite_replaces_whole_folder_without_leakage(tmp_path):
    from extract.datasets import write_digits

    target = make_tree(tmp_path / "digits", per_class=1)  # stale files that must not survive
    write_digits(target, test_fraction=0.3, per_class=10, overwrite=True)
    write_digits(target, test_fraction=0.5, per_class=10, overwrite=True)
    files = _files(target)
    assert not any(f.startswith(("cat/", "dog/")) for f in files)
    train = {f.split("/", 1)[1] for f in files if f.startswith("train/")}
    test = {f.split("/", 1)[1] for f in files if f.startswith("test/")}
    assert len(train) == len(test) == 50 and not train & test
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no staging or old folder left beside it


@pytest.mark.parametrize("folder", ["valid", "validation", "dev", "Val"])
def test_split_folder_names_are_recognised(tmp_path, folder):
    from extract.reader import list_images

    root = make_tree(tmp_path / "images", per_class=2, splits=("train", folder))
    listing = list_images(root)
    assert listing.class_names == ["cat", "dog"]
    assert sorted(set(listing.splits)) == ["train", "val"]


def test_split_folders_mixed_with_class_folders_are_refused(tmp_path):
    from extract.reader import list_images

    root = make_tree(tmp_path / "images", per_class=1, splits=("train", "valid"))
    make_tree(root, classes=("owl",), per_class=1)
    with pytest.raises(ValueError, match=r"train, valid look like splits but owl do not"):
        list_images(root)


def test_class_missing_from_one_side_of_the_split_is_a_note(tmp_path):
    from classify import classify_codes
    from codes_fixtures import imbalanced_codes

    codes, y = imbalanced_codes((30, 30, 10))
    split = np.where(y == 2, "test", np.where(np.arange(len(y)) % 3 == 0, "test", "train"))
    path = write_codes_file(tmp_path / "codes.h5", codes, y, ["a", "b", "c"], split=list(split))
    report = classify_codes(path, tmp_path / "out", classifier="svm", C=1.0, cv=0, progress=False)
    assert any("class c has no training rows" in n for n in report["notes"])
    assert "class c has no training rows" in (tmp_path / "out" / "report.txt").read_text()


@pytest.mark.parametrize("header,order", [("filename,class", "pl"), ("image,label", "pl"), ("file,target", "pl"),
                                          ("path,class,split", "pls"), ("Label,Filepath", "lp"),
                                          ("img,category,subset", "pls")])
def test_manifest_accepts_common_header_names(tmp_path, header, order):
    from extract.reader import list_images

    make_tree(tmp_path / "images", per_class=2)
    lines = [header]
    for cls in ("cat", "dog"):
        for k, split in enumerate(("train", "validation")):
            cells = {"p": f"images/{cls}/img_{k:03d}.png", "l": cls, "s": split}
            lines.append(",".join(cells[c] for c in order))
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    listing = list_images(tmp_path / "list.csv")
    assert listing.class_names == ["cat", "dog"] and len(listing) == 4
    assert set(listing.splits) == ({"train", "val"} if "s" in order else {""})


def test_manifest_with_an_unknown_header_is_refused(tmp_path):
    from extract.reader import list_images

    make_tree(tmp_path / "images", per_class=1)
    (tmp_path / "list.csv").write_text("picture,kind\nimages/cat/img_000.png,cat\n")
    with pytest.raises(ValueError, match=r"first row \(picture,kind\) looks like a header.*expected the header path,label"):
        list_images(tmp_path / "list.csv")


def test_manifest_without_header_still_reads_its_first_row(tmp_path):
    from extract.reader import list_images

    make_tree(tmp_path / "images", per_class=1)
    (tmp_path / "list.csv").write_text("images/cat/img_000.png,cat\nimages/dog/img_000.png,dog,test\n")
    listing = list_images(tmp_path / "list.csv")
    assert listing.class_names == ["cat", "dog"] and listing.splits == ["", "test"]


def test_test_file_holding_training_images_is_refused(tmp_path, capsys):
    from classify import classify_codes
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
    from classify import classify_codes

    train = make_codes(tmp_path / "train.h5", with_split=False)
    test = make_codes(tmp_path / "test.h5", with_split=False, seed=5)  # same paths and sizes, other codes
    report = classify_codes(train, tmp_path / "out", test=test, C=1.0, cv=0, progress=False)
    assert report["n_test"] == 102


def test_compare_checks_every_layer_before_training(tmp_path, capsys):
    codes = make_codes(tmp_path / "codes.h5")
    out = tmp_path / "out"
    assert pipeline.main(["compare", str(codes), "--out", str(out), "--layers", "block4,fc7", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no layer fc7" in err and "available layers: block4, penultimate" in err
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("option, message", [(["--classifiers", "svm,logreg"], "unknown classifier 'logreg'"),
                                             (["--layer", "fc7"], "mobilenet_v2 has no layer 'fc7'")])
def test_run_checks_classifier_and_layer_names_before_extracting(tmp_path, capsys, option, message):
    images = make_tree(tmp_path / "images", per_class=2)
    out = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(out), *FAST, *option]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "codes.h5").exists()


def test_one_layer_syntax_everywhere(tmp_path):
    from classify import classify_codes

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


def test_run_layer_values_are_runs_and_plus_concatenates(tmp_path):
    images = make_tree(tmp_path / "images", per_class=4, splits=("train", "test"))
    out = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(out), *FAST, "--workers", "0", "--layer",
                          "block4, block4+penultimate", "--classifiers", "svm", "--cv", "2"]) == 0
    with open(out / "compare" / "compare.csv", newline="") as fh:
        assert sorted(r["layers"] for r in csv.DictReader(fh)) == ["block4", "block4+penultimate"]


@pytest.mark.parametrize("command,option,value,message", [
    ("extract", "--batch-size", "-3", "must be a positive integer, got -3"),
    ("extract", "--batch-size", "0", "must be a positive integer, got 0"),
    ("extract", "--crop", "0", "must be a positive integer, got 0"),
    ("extract", "--resize", "0", "must be a positive integer, got 0"),
    ("extract", "--part-size", "0", "must be a positive integer, got 0"),
    ("extract", "--workers", "-1", "must be 0 or a positive integer, got -1"),
    ("classify", "--C", "-1", "must be a positive number, got -1"),
    ("classify", "--cv", "1", "must be 0 (no cross-validation) or at least 2 folds, got 1"),
    ("classify", "--test-fraction", "1.5", "must be a fraction between 0 and 1 (exclusive), got 1.5"),
    ("compare", "--cv", "-2", "or at least 2 folds, got -2"),
    ("layers", "--crop", "0", "must be a positive integer, got 0"),
    ("dataset", "--test-fraction", "0", "must be a fraction between 0 and 1"),
])
def test_out_of_range_numbers_get_one_clear_line(tmp_path, capsys, command, option, value, message):
    first = {"extract": [str(tmp_path), "-o", str(tmp_path / "c.h5")], "classify": ["c.h5", "--out", "o"],
             "compare": ["c.h5", "--out", "o"], "layers": ["resnet18"], "dataset": ["digits", str(tmp_path / "d")]}
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main([command, *first[command], option, value])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"cnncodes {command}: error: argument {option}: {message}" or (
        last.startswith(f"cnncodes {command}: error: argument {option}: ") and message in last)


def test_resize_smaller_than_crop_is_refused_before_work(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=1)
    assert pipeline.main(["extract", str(images), "-o", str(tmp_path / "c.h5"), "--weights", "random",
                          "--resize", "10", "--crop", "224", "--quiet"]) == 2
    assert "--resize 10 is smaller than --crop 224" in capsys.readouterr().err
    assert not (tmp_path / "c.h5").exists()


def test_api_refuses_bad_cv_and_notes_no_cv(tmp_path):
    from classify import classify_codes

    codes = make_codes(tmp_path / "codes.h5")
    with pytest.raises(ValueError, match="cv must be 0 .* got 1"):
        classify_codes(codes, tmp_path / "a", cv=1, progress=False)
    with pytest.raises(ValueError, match="C must be a positive number"):
        compare(codes, tmp_path / "b", classifiers=("svm",), C=-1.0, cv=0, progress=False)
    report = classify_codes(codes, tmp_path / "c", cv=0, progress=False)
    assert any("no cross-validation (cv=0)" in n for n in report["notes"]) and report["hyperparameter"] == "C=1"


def test_a_collection_with_no_readable_image_fails_in_one_line(tmp_path, capsys):
    images = tmp_path / "images"
    for cls in ("cat", "dog"):
        (images / cls).mkdir(parents=True)
        (images / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    codes = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(images), "-o", str(codes), *FAST, "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cnncodes extract: error: none of the 2 image(s) could be read (first: cat/broken.png")
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no readable, labeled rows to train on (2 of 2 images could not be read" in err
    assert "n_samples" not in err


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


def test_output_at_the_image_folder_is_refused(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=1)
    assert pipeline.main(["extract", str(images), "-o", str(images), *FAST]) == 2
    err = capsys.readouterr().err
    assert "is a folder; -o names the codes file to write" in err and "--overwrite" not in err
    assert pipeline.main(["run", str(images), "--out", str(images / "run"), *FAST]) == 2
    assert "inside the image folder" in capsys.readouterr().err
    assert not (images / "run").exists()


def test_layers_lists_every_alias_of_resnet18(capsys):
    from extract.backbones import get_backbone

    assert pipeline.main(["layers", "resnet18", "--crop", "64"]) == 0
    listed = {a.strip() for line in capsys.readouterr().out.splitlines()[2:]
              for a in line.split("  ")[-1].split(",") if a.strip()}
    assert set(get_backbone("resnet18").aliases) <= listed


@pytest.mark.parametrize("backbone,logits", [("mobilenet_v2", "classifier.1"), ("resnet18", "fc")])
def test_tapping_the_imagenet_logits_is_refused(tmp_path, capsys, backbone, logits):
    images = make_tree(tmp_path / "images", per_class=1)
    assert pipeline.main(["extract", str(images), "-o", str(tmp_path / "c.h5"), "--backbone", backbone,
                          "--layer", logits, *FAST]) == 2
    err = capsys.readouterr().err
    assert "output layer (the ImageNet logits" in err and f"cnncodes layers {backbone}" in err
    assert not (tmp_path / "c.h5").exists()


def test_compare_several_samplings_with_minority_recall(tmp_path, capsys):
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


@pytest.mark.parametrize("argv, message", [
    (["advise", "IMAGES", "--crop", "0"], "argument --crop: must be a positive integer, got 0"),
    (["finetune", "IMAGES", "--out", "OUT", "--workers", "-1"], "argument --workers: must be 0 or a positive integer"),
    (["finetune", "IMAGES", "--out", "OUT", "--resize", "0"], "argument --resize: must be a positive integer, got 0"),
])
def test_finetune_and_advise_numbers_get_the_same_one_line_checks(argv, message, tmp_path, capsys):
    images = make_tree(tmp_path / "images")
    argv = [str(images) if a == "IMAGES" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
