"""cnncodes finetune: freezing, learning-rate groups, resume after a kill, the report contract,
predict and extract on a fine-tuned run, the evaluation split's role, option checks.

Small MobileNetV2s at 32 px. A randomly initialized MobileNetV2 in eval-mode BatchNorm passes
almost no signal (its statistics are the init's 0 and 1), so the networks here start from a
checkpoint file whose BatchNorm statistics were measured on random images.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, make_tree
from cnncodes.extract.backbones import get_backbone
from cnncodes.extract.codesfile import RECIPE_KEYS, open_codes
from cnncodes.extract.device import mixed_precision
from cnncodes.extract.weights import RANDOM, WeightsInfo, build_model, sha256_of
from cnncodes.finetune import finetune_images
from cnncodes.finetune.data import choose_splits
from cnncodes.finetune.model import build_network, param_groups
from cnncodes.finetune.train import check_options
from cnncodes.finetune.trainer import lr_lambda
from cnncodes.pipeline import main

SMALL = dict(resize=36, crop=32, batch_size=4, workers=0, threads=1, progress=False)


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    """A MobileNetV2 checkpoint with BatchNorm statistics of random 32-px images (cumulative averages)."""
    model = build_model(get_backbone("mobilenet_v2"), WeightsInfo(RANDOM, RANDOM, ""))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32) * 4 - 2)
    path = tmp_path_factory.mktemp("weights") / "start.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = make_tree(tmp_path_factory.mktemp("ft") / "images", per_class=6, splits=("train", "test"))
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def run(tree, start_weights, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "ft"
    return out, finetune_images(tree, out, weights=str(start_weights), epochs=2, val_fraction=0.15, **SMALL)


def _state(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj.get("state_dict", obj)


def _unit(key: str, units: list[str]) -> str | None:
    return next((u for u in units if key.startswith(u + ".")), None)


@pytest.mark.parametrize("train_bn", [False, True])
def test_frozen_units_keep_weights_and_batchnorm_statistics(tree, start_weights, tmp_path, train_bn):
    report = finetune_images(tree, tmp_path / "ft", weights=str(start_weights), freeze=0.5, epochs=1,
                             train_bn=train_bn, **SMALL)
    before, after = _state(start_weights), _state(tmp_path / "ft" / "backbone.pth")
    frozen, trained = report["finetune"]["frozen_units"], report["finetune"]["trained_units"]
    assert len(frozen) == round(0.5 * (len(frozen) + len(trained))) and frozen[0] == "features.0"
    for key, value in before.items():
        unit = _unit(key, frozen)
        if unit:
            assert torch.equal(value, after[key]), f"frozen {key} changed"
    changed_weights = {_unit(k, trained) for k in before if _unit(k, trained) and k.endswith("weight")
                       and not torch.equal(before[k], after[k])}
    assert changed_weights == set(trained)  # every trained unit moved
    stats = [k for k in before if _unit(k, trained) and k.endswith("running_mean")]
    moved = [k for k in stats if not torch.equal(before[k], after[k])]
    assert (moved == stats) if train_bn else not moved


def test_learning_rate_groups_and_schedule(start_weights):
    bb = get_backbone("mobilenet_v2")
    net = build_network(build_model(bb, WeightsInfo("file", "start.pth", "", str(start_weights))), bb, 3,
                        freeze=1 / 3, freeze_until=None)
    groups = {g["name"]: g for g in param_groups(net, lr=0.02, backbone_lr_mult=0.1, weight_decay=1e-4)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 0.02 and groups["backbone"]["lr"] == pytest.approx(0.002)
    assert groups["backbone_no_decay"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == 1e-4
    head = net.model.get_submodule(net.head)
    assert {id(p) for p in groups["head"]["params"] + groups["head_no_decay"]["params"]} == \
        {id(p) for p in head.parameters()}
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    for name, p in net.model.named_parameters():
        frozen = any(name.startswith(u + ".") for u in net.frozen_units)
        assert (id(p) in in_groups) != frozen and p.requires_grad != frozen, name
    assert net.frozen_units == [f"features.{i}" for i in range(6)]  # round(19 / 3)
    warm = lr_lambda(warmup_steps=4, total_steps=20)
    factors = [warm(s) for s in range(20)]
    assert factors[:4] == sorted(factors[:4]) and max(factors) == factors[4] == 1.0 and factors[-1] < 0.01
    after_probe = lr_lambda(warmup_steps=0, total_steps=10, start=5)
    assert [after_probe(s) for s in range(5)] == [0.0] * 5 and after_probe(5) == 1.0


KILLED_RUN = """
import sys, time
sys.path.insert(0, {root!r})
from cnncodes.finetune import finetune_images
def pause(row):
    if row["epoch"] == 1:
        print("EPOCH 1 SAVED", flush=True)
        while True:
            time.sleep(60)
finetune_images({tree!r}, {out!r}, weights={weights!r}, epochs=3, lp_epochs=1, on_epoch=pause, **{small!r})
"""


def test_killed_run_resumes_to_the_same_weights(tree, start_weights, tmp_path):
    options = dict(weights=str(start_weights), epochs=3, lp_epochs=1, **SMALL)
    killed = tmp_path / "killed"
    script = KILLED_RUN.format(root=str(ROOT), tree=str(tree), out=str(killed), weights=str(start_weights),
                               small=SMALL)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "EPOCH 1 SAVED"  # blocks until the checkpoint is written
    finally:
        proc.kill()  # SIGKILL: nothing runs after this
        proc.wait()
    assert (killed / "checkpoint.pt").is_file() and not (killed / "finetuned.pt").exists()
    resumed = finetune_images(tree, killed, **options)
    straight = finetune_images(tree, tmp_path / "straight", **options)
    assert [r["epoch"] for r in resumed["finetune"]["history"]] == [1, 2, 3, 4]
    a, b = _state(killed / "finetuned.pt"), _state(tmp_path / "straight" / "finetuned.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["balanced_accuracy"] == straight["balanced_accuracy"]
    again = finetune_images(tree, killed, **options)  # a finished run: outputs rewritten, nothing retrained
    assert again["finetune"]["history"] == resumed["finetune"]["history"]
    c = _state(killed / "finetuned.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="other options"):
        finetune_images(tree, killed, **{**options, "epochs": 4})


def test_report_has_classify_keys_and_files(run, tree, tmp_path):
    from cnncodes.classify import classify_codes
    from cnncodes.extract import extract_codes

    out, report = run
    extract_codes(tree, tmp_path / "codes.h5", weights="random", resize=36, crop=32, progress=False, workers=0)
    codes_report = classify_codes(tmp_path / "codes.h5", tmp_path / "classify", cv=2, progress=False)
    assert set(report) == set(codes_report) | {"val_balanced_accuracy", "finetune"}
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) == set(report) and saved["classifier"] == "finetune"
    for name in ("report.txt", "confusion.csv", "confusion.png", "learning_curve.png", "epochs.jsonl"):
        assert (out / name).stat().st_size > 0
    assert (out / "confusion.csv").read_text().splitlines()[0] == \
        (tmp_path / "classify" / "confusion.csv").read_text().splitlines()[0]
    assert report["n_failed_excluded"] == 1 and report["finetune"]["failures"][0][0] == "train/cat/broken.jpg"
    assert report["n_test"] == 12 and report["split_source"] == "split column (train / test)"
    assert report["cv_score"] == report["val_balanced_accuracy"] == max(
        r["val_balanced_accuracy"] for r in report["finetune"]["history"])
    assert len((out / "epochs.jsonl").read_text().splitlines()) == 2


def test_predict_cli_on_a_finetuned_run(run, tree, tmp_path, capsys):
    out, _ = run
    images = tmp_path / "new"
    shutil.copytree(tree / "test", images)
    (images / "dog" / "empty.png").write_bytes(b"")
    assert main(["predict", str(out), str(images), "-o", str(tmp_path / "p.csv"), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(rows[0]) == ["path", "predicted", "true", "prob_cat", "prob_dog", "error"]
    assert len(rows) == 13
    bad = [r for r in rows if r["error"]]
    assert [r["path"] for r in bad] == ["dog/empty.png"] and bad[0]["predicted"] == ""
    for r in rows:
        if not r["error"]:
            assert r["predicted"] in ("cat", "dog")
            assert float(r["prob_cat"]) + float(r["prob_dog"]) == pytest.approx(1, abs=1e-5)
    assert "12 of 13 images predicted" in capsys.readouterr().out


def test_extract_with_the_finetuned_backbone(run, tree, tmp_path):
    out, report = run
    for weights in (out / "backbone.pth", out):  # the file, or the run folder standing for it
        codes = tmp_path / f"codes-{weights.name}.h5"
        assert main(["extract", str(tree / "test"), "-o", str(codes), "--weights", str(weights),
                     "--resize", "36", "--crop", "32", "--precision", "fp32", "--quiet"]) == 0
        recipe = open_codes(codes).recipe  # the report's recipe describes fp32 codes of the tuned backbone
        assert recipe["weights_sha256"] == sha256_of(out / "backbone.pth") == report["recipe"]["weights_sha256"]
        assert {k: recipe[k] for k in RECIPE_KEYS} == {k: report["recipe"][k] for k in RECIPE_KEYS}


def test_train_and_val_only_reports_on_val_and_validates_on_train(tmp_path, start_weights):
    root = make_tree(tmp_path / "tv", per_class=6, splits=("train", "val"))
    flipped = tmp_path / "tv_flipped"  # the same images with the val split's labels swapped
    shutil.copytree(root / "train", flipped / "train")
    shutil.copytree(root / "val" / "cat", flipped / "val" / "dog")
    shutil.copytree(root / "val" / "dog", flipped / "val" / "cat")
    a = finetune_images(root, tmp_path / "a", weights=str(start_weights), epochs=2, freeze=0.7, val_fraction=0.15,
                        **SMALL)
    b = finetune_images(flipped, tmp_path / "b", weights=str(start_weights), epochs=2, freeze=0.7, val_fraction=0.15,
                        **SMALL)
    assert a["split_source"] == "split column (train / val)" and a["n_test"] == 12
    assert a["finetune"]["val_source"].endswith("of the training split (seed 0)")
    assert a["n_train"] + a["finetune"]["n_val"] == 12
    # the evaluation labels changed nothing that was chosen or trained; only the reported score moved
    assert _untimed(a["finetune"]["history"]) == _untimed(b["finetune"]["history"])
    wa, wb = _state(tmp_path / "a" / "finetuned.pt"), _state(tmp_path / "b" / "finetuned.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["balanced_accuracy"] == pytest.approx(1 - b["balanced_accuracy"])


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "second" not in k} for row in history]


def test_a_val_split_besides_test_validates(tmp_path):
    from cnncodes.extract.reader import list_images

    listing = list_images(make_tree(tmp_path / "tvt", per_class=3, splits=("train", "val", "test")))
    splits = choose_splits(listing, listing.labels >= 0, val_fraction=0.15, seed=0)
    split = np.asarray(listing.splits)
    assert set(split[splits.val]) == {"val"} and set(split[splits.test]) == {"test"}
    assert set(split[splits.train]) == {"train"} and len(splits.train) == 6 and splits.val_source == "the val split"


@pytest.mark.parametrize("option, message", [
    (["--freeze", "1.5"], "--freeze must be between 0 and 1"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--freeze-until", "block99"], "--freeze-until block99: mobilenet_v2 has no layer"),
    (["--lr", "-1"], "--lr must be positive"),
])
def test_bad_options_fail_in_one_line_before_any_work(tree, tmp_path, capsys, option, message):
    out = tmp_path / "never"
    assert main(["finetune", str(tree), "--out", str(out), "--quiet", *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cnncodes finetune: error: {message}") and "\n" not in err
    assert not out.exists()


def test_freeze_until_alias_counts_units():
    check_options(backbone="mobilenet_v2", freeze=None, freeze_until="block3", epochs=1, lp_epochs=0, batch_size=1,
                  lr=0.1, backbone_lr_mult=0.1, weight_decay=0, warmup_epochs=0, label_smoothing=0,
                  optimizer="sgd", momentum=0.9, sampling="none", val_fraction=0.1, test_fraction=None,
                  patience=None, resize=None, crop=None, max_train_images=None, precision="auto")
    bb = get_backbone("mobilenet_v2")
    net = build_network(build_model(bb, WeightsInfo(RANDOM, RANDOM, "")), bb, 2, None, "block3")
    assert net.frozen_units[-1] == "features.6"  # block3 is features.6.conv.1


def test_mixed_precision_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mixed_precision(cpu) == (None, False)
    assert mixed_precision(cuda, bf16_supported=True) == (torch.bfloat16, False)
    assert mixed_precision(cuda, bf16_supported=False) == (torch.float16, True)
    assert mixed_precision(cuda, "fp32") == (None, False)
    assert mixed_precision(cpu, "bf16") == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        mixed_precision(cpu, "fp16")


def test_lp_epochs_train_the_head_alone_first(tree, start_weights, tmp_path):
    start = _state(start_weights)
    seen = {}

    def after_epoch(row):
        model = torch.load(tmp_path / "lp" / "checkpoint.pt", weights_only=True)["model"]
        seen[row["epoch"]] = all(torch.equal(start[k], model[k]) for k in start if not k.startswith("classifier"))

    report = finetune_images(tree, tmp_path / "lp", weights=str(start_weights), freeze=0, epochs=1, lp_epochs=1,
                             on_epoch=after_epoch, **SMALL)
    assert seen == {1: True, 2: False}  # backbone untouched by the probe epoch, trained by the next
    assert [r["phase"] for r in report["finetune"]["history"]] == ["lp", "ft"]
    assert report["finetune"]["history"][0]["lr_backbone"] == 0


@pytest.mark.parametrize("sampling, per_class", [("none", None), ("over", 8), ("under", 2)])
def test_epoch_sampler_balances_classes(sampling, per_class):
    from cnncodes.finetune.data import epoch_sampler, resampled_counts

    labels = np.array([0] * 8 + [1] * 2)
    drawn = list(epoch_sampler(labels, sampling, seed=0, epoch=0))
    assert drawn == list(epoch_sampler(labels, sampling, seed=0, epoch=0))  # seeded by (seed, epoch)
    expected = resampled_counts(labels, sampling)
    assert len(drawn) == sum(expected.values())
    if per_class is None:
        assert sorted(drawn) == list(range(10))
    else:
        assert expected == {0: per_class, 1: per_class}


@pytest.mark.parametrize("backbone, freeze, dropout_trains", [("alexnet", 1.0, False), ("mobilenet_v2", 1.0, False),
                                                              ("mobilenet_v2", 0.5, True)])
def test_the_frozen_span_runs_in_eval_mode_dropout_included(backbone, freeze, dropout_trains):
    from cnncodes.finetune.model import train_mode

    bb = get_backbone(backbone)
    net = build_network(build_model(bb, WeightsInfo(RANDOM, RANDOM, "")), bb, 2, freeze, None)
    train_mode(net, train_bn=False)
    dropout = {n: m.training for n, m in net.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert dropout and set(dropout.values()) == {dropout_trains}, dropout  # after trained blocks it regularizes
    if freeze == 1:  # the head learns from the codes themselves: the same features on every pass
        seen = []
        net.model.get_submodule(net.head).register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            net.model(x), net.model(x)
        assert torch.equal(seen[0], seen[1])


def test_balanced_loss_weights_come_from_the_counts_an_epoch_draws():
    from cnncodes.finetune.trainer import loss_weights

    y = np.array([0] * 80 + [1] * 20)
    names = ["a", "b"]
    assert loss_weights("balanced", names, y, "none") == pytest.approx([0.625, 2.5])
    for sampling in ("over", "under"):  # the sampler balances the draws: no second correction in the loss
        assert loss_weights("balanced", names, y, sampling) == pytest.approx([1, 1])
    assert loss_weights("b=3", names, y, "over") == pytest.approx([1, 3])  # explicit weights are kept
    assert loss_weights("none", names, y, "none") == pytest.approx([1, 1])


def _imbalanced_tree(root: Path, train: dict, test: dict) -> Path:
    from conftest import write_image

    rng = np.random.default_rng(0)
    for split, counts in (("train", train), ("test", test)):
        for c, (name, n) in enumerate(counts.items()):
            for k in range(n):
                write_image(root / split / name / f"img_{k:03d}.png", rng, cls=c)
    return root


@pytest.mark.parametrize("sampling, weights", [("none", {"cat": 0.5625, "dog": 4.5}), ("over", {"cat": 1, "dog": 1})])
def test_a_single_image_class_is_warned_about_and_missing_held_out_classes_noted(tmp_path, capsys, start_weights,
                                                                                sampling, weights):
    root = _imbalanced_tree(tmp_path / "imgs", train={"cat": 8, "dog": 1}, test={"cat": 2})
    report = finetune_images(root, tmp_path / "ft", weights=str(start_weights), epochs=1, freeze=1, val_fraction=0,
                             sampling=sampling, **SMALL)
    assert report["finetune"]["loss_weights"] == pytest.approx(weights)
    heavy = [n for n in report["notes"] if n.startswith("class 'dog' has 1 training image(s), each weighing 8.0x")]
    assert len(heavy) == 1 and heavy[0] in capsys.readouterr().err  # said on stderr too, though not verbose
    assert any("class dog has no held-out rows" in n for n in report["notes"])
    assert "class 'dog' has 1 training image" in (tmp_path / "ft" / "report.txt").read_text()


def test_report_text_says_validation_and_names_no_layer(run):
    from cnncodes.classify.render import summarize
    from cnncodes.finetune.report import curve_figure

    out, report = run
    text = (out / "report.txt").read_text()
    assert report["layers"] == [] and "layers:" not in text and "penultimate" not in text
    assert "CV" not in text and "validation score:  " in text
    assert "CV" not in summarize(report) and f"validation {report['cv_score']:.3f}" in summarize(report)
    history = report["finetune"]["history"]
    assert all(isinstance(r["val_loss"], float) for r in history)
    fig = curve_figure(history, report["finetune"]["best_epoch"])
    ax = fig.axes[0]
    assert "validation loss" in ax.get_legend_handles_labels()[1]
    assert all(float(t).is_integer() for t in ax.get_xticks())


@pytest.mark.parametrize("backbone_too, train_bn", [(True, False), (False, False), (True, True)])  # LP-FT's probe
def test_fused_forward_folds_eval_batchnorm_skips_autograd_in_frozen_blocks_same_loss_and_gradients(
        start_weights, backbone_too, train_bn):
    from cnncodes.finetune.model import frozen_span, fused_forward, place, set_trainable, train_mode, unit_of

    bb = get_backbone("mobilenet_v2")
    net = build_network(build_model(bb, WeightsInfo("file", "start.pth", "", str(start_weights))), bb, 3,
                        freeze=1 / 3, freeze_until=None)
    place(net.model, torch.device("cpu")).double()  # float64: the two paths differ by rounding only
    set_trainable(net, backbone_too)
    train_mode(net, train_bn=train_bn, backbone_too=backbone_too)
    x = (torch.rand(4, 3, 32, 32, dtype=torch.float64) * 4 - 2).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 0])

    def step() -> tuple[torch.Tensor, dict]:
        torch.manual_seed(0)  # the same dropout mask
        net.model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net.model(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.model.named_parameters() if p.grad is not None}

    want_loss, want_grads = step()
    state = {k: v.clone() for k, v in net.model.state_dict().items()}
    span = frozen_span(net, backbone_too)
    batchnorm_calls, span_outputs = [], []
    for m in net.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda bn, a, out: batchnorm_calls.append(torch.equal(out, a[0])))
    net.model.get_submodule(span[-1]).register_forward_hook(lambda m, a, out: span_outputs.append(out))
    with fused_forward(net, backbone_too):
        loss, grads = step()
    training_bn = sum(m.training for m in net.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert batchnorm_calls.count(True) == len(batchnorm_calls) - training_bn  # eval ones pass through: folded
    assert bool(training_bn) == train_bn
    assert not span_outputs[0].requires_grad  # no autograd graph where nothing learns
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-9)
    assert set(grads) == set(want_grads) and not {unit_of(net, n) for n in grads} & set(span)
    if not train_bn:
        assert any(".conv.1.weight" in n or ".1.weight" in n for n in grads)  # trained BatchNorm weights still learn
    for name, g in grads.items():  # equal but for rounding
        torch.testing.assert_close(g, want_grads[name], rtol=1e-7, atol=1e-10, msg=name)
    batchnorm_calls.clear()
    net.model(x)  # the model's own layers again
    assert batchnorm_calls and not any(batchnorm_calls)
    assert net.model.state_dict().keys() == state.keys()
    changed = {k for k, v in net.model.state_dict().items() if not torch.equal(v, state[k])}
    assert not changed if not train_bn else changed and all("running_" in k or "num_batches" in k for k in changed)


def test_evaluation_forward_folds_batchnorm_with_the_same_outputs(start_weights):
    from torchvision.transforms.v2.functional import center_crop

    from cnncodes.finetune.data import normalize
    from cnncodes.finetune.trainer import forward_logits

    bb = get_backbone("mobilenet_v2")
    model = build_model(bb, WeightsInfo("file", "start.pth", "", str(start_weights))).eval()
    images = [torch.randint(0, 256, (3, 36, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(k))
              for k in range(5)]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    with torch.no_grad():
        want = model(normalize(torch.stack([center_crop(im, [32, 32]) for im in images]), mean, std))
    passed_through = []
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda bn, a, out: passed_through.append(torch.equal(out, a[0])))
    got = forward_logits(model, images, 32, mean, std, torch.device("cpu"), None, batch_size=2)
    assert passed_through and all(passed_through)  # folded into the convolutions
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])  # SAME-padded strided convs; convN / bnN
def test_folded_batchnorm_keeps_each_architectures_outputs(backbone):
    from cnncodes.finetune.model import folded_batchnorm

    model = build_model(get_backbone(backbone), WeightsInfo(RANDOM, RANDOM, "")).double().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics unlike the init's 0 and 1
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        with folded_batchnorm(model):
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert not any("_conv_forward" in vars(m) or "forward" in vars(m) for m in model.modules())  # restored


def test_default_epochs_come_from_the_step_budget():
    from cnncodes.finetune.budget import step_sized_epochs
    from cnncodes.finetune.options import FinetuneConfig

    assert FinetuneConfig.epochs is None  # the command line and the Python API size them
    assert step_sized_epochs(360, 32) == 25  # 12 steps an epoch: 25 epochs reach 300 steps
    assert step_sized_epochs(300, 32) == 30
    assert step_sized_epochs(20_000, 32) == 6  # 625 steps an epoch: never fewer than 6 epochs
    assert step_sized_epochs(1, 32) == 300


def test_unset_epochs_are_sized_from_the_images_an_epoch_draws(tmp_path, start_weights, monkeypatch):
    import cnncodes.finetune.train
    from cnncodes import finetune
    from cnncodes.finetune.budget import step_sized_epochs

    asked = []

    def small_budget(n_train, batch_size):  # the rule with a 6-step floor, so the test trains a few epochs
        asked.append((n_train, batch_size))
        return step_sized_epochs(n_train, batch_size, min_steps=6, default_epochs=1)

    monkeypatch.setattr(finetune.train, "step_sized_epochs", small_budget)
    root = _imbalanced_tree(tmp_path / "imgs", train={"cat": 6, "dog": 2}, test={"cat": 2, "dog": 2})
    report = finetune_images(root, tmp_path / "ft", weights=str(start_weights), freeze=1, val_fraction=0,
                             sampling="over", **SMALL)
    assert asked == [(12, 4)]  # 6 cats + 2 dogs drawn as 6 + 6 (--sampling over), in batches of 4
    assert report["finetune"]["options"]["epochs"] == report["finetune"]["epochs_run"] == 2  # 3 steps an epoch
    assert finetune_images(root, tmp_path / "ft", weights=str(start_weights), freeze=1, val_fraction=0,
                           sampling="over", **SMALL)["finetune"]["epochs_run"] == 2  # the same call resumes


def test_by_default_every_training_image_trains_and_the_last_epoch_is_kept(tree, start_weights, tmp_path, capsys):
    out = tmp_path / "ft"
    kept = {}

    def after_epoch(row):
        kept.update(torch.load(out / "checkpoint.pt", weights_only=True)["model"])

    report = finetune_images(tree, out, weights=str(start_weights), epochs=2, on_epoch=after_epoch,
                             **{**SMALL, "progress": True})
    log = capsys.readouterr().err
    assert "epoch 2: loss" in log and "best so far" not in log  # no validation set: nothing is "best"
    ft = report["finetune"]
    assert report["n_train"] == 12 and ft["n_val"] == 0  # 12 readable training images (and a broken one), none carved
    assert report["val_balanced_accuracy"] is None and report["cv_score"] is None
    assert ft["best_epoch"] == ft["epochs_run"] == 2 and all(r["val_balanced_accuracy"] is None for r in ft["history"])
    model = _state(out / "finetuned.pt")
    assert all(torch.equal(model[k], kept[k]) for k in kept)  # the weights of the last epoch
    assert any(n.startswith("no validation set: the model is the last epoch's") for n in report["notes"])
    text = (out / "report.txt").read_text()
    assert "the last epoch: no validation set, no validation score" in text and "validation score:" not in text
    assert json.loads((out / "report.json").read_text())["val_balanced_accuracy"] is None
    assert main(["predict", str(out), str(tree / "test"), "-o", str(tmp_path / "p.csv"), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 12 and all(r["predicted"] in ("cat", "dog") for r in rows)


def test_patience_without_a_validation_set_fails_in_one_line_before_decoding(tree, tmp_path, capsys):
    assert main(["finetune", str(tree), "--out", str(tmp_path / "ft"), "--patience", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnncodes finetune: error: --patience needs a validation set") and "\n" not in err
    assert not (tmp_path / "ft" / "report.json").exists()
