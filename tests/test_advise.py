"""cnncodes advise: the scenario mapping, the transferability scores, and the command end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnncodes import pipeline
from cnncodes.advise import commands, evidence, scenario, transferability as tr
from conftest import FAST, make_tree
from cnncodes.extract.reader import list_images


# --- the mapping from evidence to scenario (pure) ---------------------------------------------------------

@pytest.mark.parametrize("per_class, similarity, expected", [
    (100, 0.8, 1), (5000, 0.8, 2), (100, 0.2, 3), (5000, 0.2, 4),
])
def test_each_scenario_from_size_and_similarity(per_class, similarity, expected):
    assert scenario.scenario_for(per_class, similarity) == expected


def test_size_boundary_is_large_from_the_threshold_on():
    at = scenario.LARGE_FROM_PER_CLASS
    assert scenario.scenario_for(at, 0.9) == 2
    assert scenario.scenario_for(at - 0.5, 0.9) == 1  # a median between two class counts
    assert scenario.scenario_for(at, 0.1) == 4
    assert scenario.scenario_for(at - 1, 0.1) == 3


def test_similarity_boundary_is_similar_from_the_threshold_on():
    at = scenario.SIMILAR_FROM
    assert scenario.scenario_for(10, at) == 1
    assert scenario.scenario_for(10, math.nextafter(at, 0)) == 3
    assert scenario.scenario_for(10**6, at) == 2
    assert scenario.scenario_for(10**6, math.nextafter(at, 0)) == 4


def test_top_layer_preference_is_even_for_equal_probes_and_symmetric():
    assert scenario.top_layer_preference(0.8, 0.8, 100) == pytest.approx(0.5)
    assert scenario.top_layer_preference(1.0, 1.0, 100) == pytest.approx(0.5)  # two perfect probes: no 0 / 0
    a, b = scenario.top_layer_preference(0.9, 0.7, 50), scenario.top_layer_preference(0.7, 0.9, 50)
    assert a + b == pytest.approx(1.0)
    # errors 0.1 + 1/50 and 0.3 + 1/50: the early layer's share of the total error
    assert a == pytest.approx(0.32 / (0.32 + 0.12))


def test_similarity_is_the_mean_of_the_label_aware_parts_only():
    parts = scenario.similarity_parts(head_entropy=0.2, leep_fractions=[0.6, 0.6, 0.6], top_scores=[0.9] * 3,
                                      early_scores=[0.9] * 3, n_images=30)
    assert parts.head_confidence == pytest.approx(0.8)  # reported, not counted: it ignores the labels
    assert parts.similarity == pytest.approx((0.6 + 0.5) / 2)
    assert parts.interval == pytest.approx((parts.similarity, parts.similarity))  # folds that agree: no spread


def test_similarity_interval_is_the_t_interval_of_the_fold_similarities():
    fractions, top, early = [0.2, 0.4, 0.6, 0.8], [0.9, 0.8, 0.9, 0.8], [0.7, 0.8, 0.9, 0.6]
    parts = scenario.similarity_parts(0.5, fractions, top, early, n_images=40)
    per_fold = [scenario.similarity_of(f, scenario.top_layer_preference(t, e, 10))
                for f, t, e in zip(fractions, top, early)]
    half = 3.182446 * np.std(per_fold, ddof=1) / 2  # t(0.975, 3 degrees of freedom) * standard error
    low, high = parts.interval
    assert low == pytest.approx(parts.similarity - half, abs=1e-4)
    assert high == pytest.approx(parts.similarity + half, abs=1e-4)


def test_commands_per_scenario_name_the_layer_and_freeze():
    common = commands.carried_options("mobilenet_v2", "random", 72, 64)
    assert common == ["--weights", "random", "--resize", "72", "--crop", "64"]
    one = [r.command for r in commands.recommend(1, "my images", "block5", common)]
    assert one == ["cnncodes run 'my images' --out runs/codes-penultimate --layer penultimate --weights random "
                   "--resize 72 --crop 64"]
    two = [r.command for r in commands.recommend(2, "d", "block5", [])]
    assert two[0] == f"cnncodes finetune d --out runs/finetune-0.7 --freeze {scenario.FREEZE_LARGE_SIMILAR:g}"
    three = [r.command for r in commands.recommend(3, "d", "block4", [])]
    assert "--freeze 0.33" in three[0] and "--layer block4" in three[1]  # fine-tuning won 4 of 5 such sets
    four = [r.command for r in commands.recommend(4, "d", "block4", [])]
    assert four == ["cnncodes finetune d --out runs/finetune-0 --freeze 0"]
    assert commands.carried_options("resnet18", None, None, None) == ["--backbone", "resnet18"]


# The calibration sets (bench/RESULTS.md, issue 24): median training images per class, similarity, and the
# measured winner on the set's evaluation split (fine-tuning when its best freeze beat every codes row by more
# than one standard error of the difference).
CALIBRATION = {"hymenoptera": (122.5, 0.745, "codes"), "clothing6": (90, 0.539, "finetune"),
               "rsscn7_aerial": (60, 0.329, "finetune"), "sign_digits": (138, 0.325, "finetune"),
               "potato_leaf_imbalanced": (120, 0.373, "finetune"), "digits": (126.5, 0.219, "codes")}


def test_the_similarity_threshold_sends_the_calibration_sets_it_can_to_their_measured_winner():
    said = {name: scenario.scenario_for(per_class, sim) for name, (per_class, sim, _) in CALIBRATION.items()}
    agree = [name for name, (_, _, won) in CALIBRATION.items() if said[name] == (1 if won == "codes" else 3)]
    # winners of finetune's defaults (bench/RESULTS.md); digits (codes won) sits below sets where fine-tuning won
    assert sorted(agree) == ["clothing6", "hymenoptera", "potato_leaf_imbalanced", "rsscn7_aerial", "sign_digits"], said


def test_the_recommended_finetune_gets_at_least_300_steps(tmp_path):
    root = make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=6, splits=("train", "test"))
    epochs = commands.finetune_epochs(list_images(root))
    assert epochs == 300  # 18 training images (no carve by default): one step of 32 an epoch
    tune = [r.command for r in commands.recommend(3, "d", "block4", [], epochs)][0]
    assert tune == "cnncodes finetune d --out runs/finetune-0.33 --freeze 0.33 --epochs 300"
    flat = make_tree(tmp_path / "flat", classes=("a", "b"), per_class=200)  # no split folders
    assert commands.finetune_epochs(list_images(flat)) == 30  # 400 - 100 evaluation (no carve): 10 steps of 32 an epoch


def test_notes_flag_imbalance_and_a_borderline_similarity():
    from cnncodes.advise.report import notes_for

    size = evidence.Size(n_images=40, n_classes=2, per_class={"a": 30, "b": 10}, min_per_class=10,
                         median_per_class=20.0, max_per_class=30, imbalance_ratio=3.0, split="train")
    at = scenario.SIMILAR_FROM
    notes = notes_for(size, at + 0.01, (at - 0.03, at + 0.05))
    assert any("imbalanced (3.0x)" in n for n in notes) and any("borderline" in n for n in notes)
    assert not any("borderline" in n for n in notes_for(size, at + 0.01, (at + 0.005, at + 0.015)))
    balanced = evidence.Size(n_images=20, n_classes=2, per_class={"a": 10, "b": 10}, min_per_class=10,
                             median_per_class=10.0, max_per_class=10, imbalance_ratio=1.0, split="train")
    assert notes_for(balanced, 0.9, (0.85, 0.95)) == []


# --- transferability scores on constructed probability matrices --------------------------------------------

def test_entropy_is_zero_when_certain_and_one_when_uniform():
    assert tr.normalized_entropy(np.eye(5)) == pytest.approx(0.0)
    assert tr.normalized_entropy(np.full((3, 8), 1 / 8)) == pytest.approx(1.0)
    half = np.vstack([np.eye(4)[:2], np.full((2, 4), 0.25)])
    assert tr.normalized_entropy(half) == pytest.approx(0.5)


def test_leep_of_a_perfectly_informative_head_is_zero():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(10)[[3, 7, 1, 3, 7, 1]]  # each target class has its own source class
    assert tr.leep(probs, labels) == pytest.approx(0.0)
    assert tr.nce(probs, labels) == pytest.approx(0.0)


def test_leep_and_nce_of_an_uninformative_head_are_minus_the_label_entropy():
    labels = np.array([0, 0, 0, 1])
    h_y = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert tr.label_entropy(labels) == pytest.approx(h_y)
    same = np.tile([0.2, 0.5, 0.3], (4, 1))
    assert tr.leep(same, labels) == pytest.approx(-h_y)
    assert tr.nce(same, labels) == pytest.approx(-h_y)
    assert tr.explained_fraction(tr.leep(same, labels), h_y) == pytest.approx(0.0)


def test_leep_matches_the_papers_formula_computed_by_loops():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=9)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 1])
    n = len(labels)
    joint = [[sum(probs[i, z] for i in range(n) if labels[i] == y) / n for z in range(4)] for y in range(3)]
    marginal = [sum(joint[y][z] for y in range(3)) for z in range(4)]
    expected = sum(math.log(sum(joint[labels[i]][z] / marginal[z] * probs[i, z] for z in range(4)))
                   for i in range(n)) / n
    assert tr.leep(probs, labels) == pytest.approx(expected)


def test_nce_by_hand():
    labels = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 0, 0, 2]]  # top-1 classes 0, 0, 0, 2
    # H(Y|Z) = P(z=0) H(2/3, 1/3) + P(z=2) * 0
    h = 0.75 * -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert tr.nce(probs, labels) == pytest.approx(-h)


def _head_outputs(n: int, rng: np.random.Generator) -> np.ndarray:
    """1000-way softmax outputs as peaked as a real ImageNet head's on photos."""
    return tr.softmax(rng.normal(scale=3.0, size=(n, 1000)))


@pytest.mark.parametrize("classes", [2, 10, 50])
def test_cross_fitted_leep_of_labels_the_head_knows_nothing_about_is_near_zero(classes):
    rng = np.random.default_rng(classes)
    probs = _head_outputs(500, rng)
    labels = rng.permutation(np.arange(500) % classes)  # permuted: independent of the head's outputs
    h_y = tr.label_entropy(labels)
    in_sample = tr.explained_fraction(tr.leep(probs, labels), h_y)
    held_out = tr.explained_fraction(tr.leep_cv(probs, labels, folds=5, seed=0).mean(), h_y)
    assert in_sample > 0.15  # the bias the cross-fitting removes, larger with more classes
    assert held_out <= 0.05
    assert tr.explained_fraction(tr.nce_cv(probs, labels, folds=5, seed=0).mean(), h_y) <= 0.05


def test_cross_fitted_leep_keeps_an_informative_head_high():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    probs = np.eye(1000)[np.array([10, 500, 900])[labels]]  # each class has its own ImageNet class
    folds = tr.leep_cv(probs, labels, folds=5, seed=0)
    assert len(folds) == 5 and tr.explained_fraction(folds.mean(), tr.label_entropy(labels)) > 0.95
    noisy = 0.5 * probs + 0.5 * _head_outputs(300, rng)
    assert tr.explained_fraction(tr.leep_cv(noisy, labels).mean(), tr.label_entropy(labels)) > 0.5


def test_cross_fitting_folds_are_stratified_and_seeded():
    labels = np.array([0] * 20 + [1] * 10)
    folds = tr.folds_of(labels, 5, seed=3)
    assert [np.bincount(labels[held]).tolist() for _, held in folds] == [[4, 2]] * 5
    assert all((a[1] == b[1]).all() for a, b in zip(folds, tr.folds_of(labels, 5, seed=3)))


def test_softmax_rows_sum_to_one_and_keep_order():
    p = tr.softmax(np.array([[1000.0, 0.0], [0.0, 1.0]]))
    assert np.allclose(p.sum(axis=1), 1) and p[0, 0] > 0.999 and p[1, 1] > p[1, 0]


def test_explained_fraction_needs_two_classes():
    with pytest.raises(ValueError, match="single class"):
        tr.explained_fraction(0.0, 0.0)


# --- measuring the image set -------------------------------------------------------------------------------

def test_stratified_sample_keeps_every_class_in_proportion():
    labels = np.array([0] * 90 + [1] * 10 + [2] * 1)
    picked = evidence.stratified_sample(labels, 20, seed=0)
    counts = np.bincount(labels[picked])
    assert counts.tolist() == [18, 2, 1]  # proportional, at least 2 where the class has them
    assert picked.tolist() == evidence.stratified_sample(labels, 20, seed=0).tolist()
    assert len(evidence.stratified_sample(labels, 500, seed=0)) == len(labels)


def test_size_counts_the_train_split_only(tmp_path):
    root = make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=3, splits=("train",))
    make_tree(root, classes=("a", "b"), per_class=4, splits=("test",), seed=1)
    (root / "train" / "c" / "img_003.png").write_bytes((root / "train" / "c" / "img_000.png").read_bytes())
    listing = list_images(root)
    rows, which = evidence.training_rows(listing)
    size = evidence.measure_size(listing, rows, which)
    assert (size.split, size.n_images, size.n_classes) == ("train", 10, 3)
    assert size.per_class == {"a": 3, "b": 3, "c": 4}
    assert (size.min_per_class, size.median_per_class, size.max_per_class) == (3, 3.0, 4)
    assert size.imbalance_ratio == pytest.approx(4 / 3)


# --- the command end to end --------------------------------------------------------------------------------

def _advise(capsys, *argv) -> tuple[int, str, str]:
    code = pipeline.main(["advise", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_contract(tmp_path, capsys):
    root = make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=6, splits=("train", "test"))
    code, out, _ = _advise(capsys, root, "--json", "--sample", 12, *FAST)
    assert code == 0
    advice = json.loads(out)
    assert advice["scenario"] in (1, 2, 3, 4)
    assert isinstance(advice["similarity"], float) and 0 <= advice["similarity"] <= 1
    assert advice["commands"] and all(c.startswith("cnncodes ") for c in advice["commands"])
    assert all("--weights random" in c for c in advice["commands"])  # the same network as the advice
    assert advice["size"]["per_class"] == {"a": 6, "b": 6, "c": 6}  # train/ only, test/ never counted
    assert advice["size"]["n_images"] == 18 and advice["size"]["n_classes"] == 3
    assert advice["evidence"]["n_sampled"] == 12
    assert set(advice["evidence"]["probe"]) == {"penultimate", *evidence.EARLY_LAYERS["mobilenet_v2"]}
    assert advice["scenario"] == scenario.scenario_for(advice["size"]["median_per_class"], advice["similarity"])
    assert advice["try"] is None
    assert advice["scenario"] == 3 and "--freeze 0.33 --epochs 300" in advice["commands"][0]  # random weights
    ev, parts = advice["evidence"], advice["evidence"]["parts"]
    assert advice["similarity"] == pytest.approx((parts["leep_fraction"] + parts["top_layer_preference"]) / 2,
                                                 abs=1e-4)  # head confidence is reported, not counted
    low, high = advice["similarity_interval"]
    assert low <= advice["similarity"] <= high and parts["interval"] == [low, high]
    assert len(ev["leep_per_fold"]) == ev["probe_folds"] == len(ev["probe_per_fold"]["penultimate"])
    assert ev["leep"] == pytest.approx(np.mean(ev["leep_per_fold"]))
    assert {"leep_in_sample", "nce", "nce_in_sample", "head_entropy"} <= set(ev)


def test_cli_text_and_out_files(tmp_path, capsys):
    root = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=5)
    code, out, _ = _advise(capsys, root, "--out", tmp_path / "advice", *FAST)
    assert code == 0
    assert "scenario " in out and "recommended:" in out and "cnncodes " in out
    saved = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert saved["size"]["split"] == "all labeled" and saved["size"]["n_images"] == 10
    assert (tmp_path / "advice" / "advice.txt").read_text().strip() == out.strip()


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "lenet"], "unknown backbone"),
    (["--sample", "3"], "--sample must be"),
    (["--sample", "10"], "too small for 6 classes"),
])
def test_cli_refuses_bad_options_in_one_line(tmp_path, capsys, argv, message):
    root = make_tree(tmp_path / "imgs", classes=tuple("abcdef"), per_class=3)
    code, out, err = _advise(capsys, root, *argv, *FAST)
    assert code == 2 and out == ""
    assert err.startswith("cnncodes advise: error: ") and message in err and err.count("\n") == 1


def test_cli_refuses_an_empty_folder_and_a_single_class(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _advise(capsys, tmp_path / "empty", *FAST)
    assert code == 2 and "no images found" in err
    one = make_tree(tmp_path / "one", classes=("a",), per_class=4)
    code, _, err = _advise(capsys, one, *FAST)
    assert code == 2 and "at least two" in err


def test_cli_try_scores_probes_and_a_short_finetune(tmp_path, capsys):
    root = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=8, splits=("train", "test"))
    code, out, _ = _advise(capsys, root, "--try", "--json", "--out", tmp_path / "adv", *FAST)
    assert code == 0
    tried = json.loads(out)["try"]
    assert [row["option"].split()[0] for row in tried] == ["codes", "codes", "finetune"]
    assert all(0 <= row["score"] <= 1 for row in tried)
    assert list((tmp_path / "adv").glob("try-finetune-*/report.json"))  # kept under --out


def test_ctrl_c_during_the_pass_exits_130_and_leaves_no_temporary_files(tmp_path, capsys, monkeypatch):
    import tempfile

    from cnncodes.extract import ExtractionInterrupted

    def interrupted(*args, **kwargs):
        raise ExtractionInterrupted("interrupted: 0 of 1 parts are saved; run the same command again to resume")

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(evidence, "extract_codes", interrupted)
    root = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=5)
    code, out, err = _advise(capsys, root, "--out", tmp_path / "adv", *FAST)
    assert code == 130 and out == "" and "interrupted" in err and "resume" not in err
    assert list(scratch.iterdir()) == [] and not (tmp_path / "adv" / "advice.json").exists()


def test_try_finetune_reads_and_scores_training_images_only(tmp_path, capsys):
    root = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=8, splits=("train", "val"))
    for image in (root / "val").rglob("*.png"):
        image.write_bytes(b"held out: never to be read")  # any read of val/ would be a recorded failure
    code, out, err = _advise(capsys, root, "--try", "--json", "--out", tmp_path / "adv", *FAST)
    assert code == 0, err
    row = json.loads(out)["try"][-1]
    report = json.loads(next((tmp_path / "adv").glob("try-finetune-*/report.json")).read_text())
    assert report["n_failed_excluded"] == 0 and report["finetune"]["failures"] == []
    assert report["n_train"] + report["n_test"] == 16 and report["finetune"]["n_val"] == 0
    assert row["score"] == report["balanced_accuracy"] and "held out of the trial" in row["how"]


def test_a_class_with_one_image_is_named_before_the_pass(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the backbone pass ran")

    root = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=20)
    make_tree(tmp_path / "one", classes=("lonely",), per_class=1)
    (tmp_path / "one" / "lonely").rename(root / "lonely")
    monkeypatch.setattr(evidence, "extract_codes", never)
    code, out, err = _advise(capsys, root, *FAST)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "class 'lonely' (1) has fewer than 2 training images" in err


def test_a_class_with_one_readable_sampled_image_is_named(tmp_path, capsys):
    root = make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=4)
    for image in sorted((root / "c").glob("*.png"))[1:]:
        image.write_bytes(b"unreadable")
    code, _, err = _advise(capsys, root, *FAST)
    assert code == 2 and "class 'c' (1) has fewer than 2 readable sampled images" in err
