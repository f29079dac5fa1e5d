"""Issue 22 items 18, 19, 21, 23, 24 and issue 23's exit codes: predict on either kind of run (thresholds,
codes files, nothing predicted), option checks before torch loads, --weights messages, the Python API
(finetune, advise, load_model / predict on a fine-tuned run, the command line's names, load_codes,
CodesTransformer, the docs' Python example), and exit 1 for bugs."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from codes_fixtures import imbalanced_codes, make_codes, split_column, write_codes_file
from conftest import FAST, ROOT, make_tree
from test_finetune import SMALL, run, start_weights, tree  # noqa: F401  (fixtures: a fine-tuned two-class run)

import cnncodes
import cnncodes.extract.cli
from cnncodes import extract
from cnncodes import pipeline
from cnncodes.extract.errors import UsageError


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _predict(run_dir, images, out, *extra) -> int:
    return pipeline.main(["predict", str(run_dir), str(images), "-o", str(out), "--quiet", "--workers", "0", *extra])


# --- 18: --threshold / --positive on a fine-tuned run ------------------------------------------------------

def test_threshold_and_positive_on_a_two_class_finetuned_run(run, tree, tmp_path, capsys):
    out, _ = run
    assert _predict(out, tree / "test", tmp_path / "all_cat.csv", "--threshold", "0", "--positive", "cat") == 0
    assert {r["predicted"] for r in _rows(tmp_path / "all_cat.csv")} == {"cat"}  # prob_cat >= 0 everywhere
    assert "threshold: cat where prob_cat >= 0" in capsys.readouterr().out
    assert _predict(out, tree / "test", tmp_path / "all_dog.csv", "--threshold", "1.0", "--positive", "cat") == 0
    rows = _rows(tmp_path / "all_dog.csv")
    assert {r["predicted"] for r in rows if float(r["prob_cat"]) < 1} == {"dog"}
    # the default positive class is the second one, as for codes models
    result = cnncodes.predict(out, tree / "test", tmp_path / "t.csv", threshold=0.0, workers=0, quiet=True)
    assert result["threshold"] == {"positive_class": "dog", "threshold": 0.0, "on": "prob_dog"}
    assert result["predicted_counts"] == {"dog": result["n_predicted"]}


@pytest.mark.parametrize("options, message", [
    (["--positive", "cat"], "--positive names the class a --threshold applies to"),
    (["--threshold", "1.5"], "must lie in [0, 1]"),
    (["--threshold", "0.5", "--positive", "bird"], "positive class 'bird' is not a class of the model"),
])
def test_bad_threshold_options_on_a_finetuned_run_are_usage_errors(run, tree, tmp_path, capsys, options, message):
    out, _ = run
    assert _predict(out, tree / "test", tmp_path / "p.csv", *options) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "p.csv").exists()


# --- 19: a codes file given to a fine-tuned run; nothing predicted ----------------------------------------

@pytest.mark.parametrize("name", ["codes.h5", "codes.data"])  # by suffix, or by the HDF5 signature
def test_a_codes_file_given_to_a_finetuned_run_is_refused(run, tmp_path, capsys, name):
    out, _ = run
    codes = make_codes(tmp_path / "codes.h5", class_names=("cat", "dog"), n_per_class=(5, 5))
    codes = Path(codes).rename(tmp_path / name)
    assert _predict(out, codes, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert f"{codes} is a codes file" in err and "fine-tuned network" in err and not (tmp_path / "p.csv").exists()


def test_predict_exits_non_zero_when_nothing_was_predicted(run, tmp_path, capsys):
    out, _ = run
    broken = tmp_path / "broken"
    (broken / "cat").mkdir(parents=True)
    (broken / "cat" / "a.png").write_bytes(b"")
    assert _predict(out, broken, tmp_path / "p.csv") == 1
    assert "none of the 1 image(s) could be predicted" in capsys.readouterr().err


# --- 21: option checks before torch loads, the class count before extraction -------------------------------

@pytest.mark.parametrize("option, message", [
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--freeze", "1.5"], "--freeze must be between 0 and 1"),
    (["--backbone", "resnet9"], "unknown backbone 'resnet9'"),
])
def test_finetune_options_fail_before_torch_is_imported(tmp_path, option, message):
    code = ("import sys\nfrom cnncodes import pipeline\nrc = pipeline.main(sys.argv[1:])\n"
            "print(rc, 'torch' in sys.modules, 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, "finetune", str(tmp_path / "no-images"), "--out",
                           str(tmp_path / "ft"), *option], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.split() == ["2", "False", "False"]
    assert done.stderr.strip().startswith(f"cnncodes finetune: error: {message}") and "\n" not in done.stderr.strip()


def test_python_api_checks_finetune_options_before_torch_is_imported(tmp_path):
    code = ("import sys, cnncodes\ntry:\n    cnncodes.finetune('x', 'y', epochs=0)\nexcept ValueError as err:\n"
            "    print(type(err).__name__, '|', err, '|', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "UsageError | --epochs must be a whole number >= 1, got 0 | False"


def test_run_on_a_one_class_folder_is_refused_before_extraction(tmp_path, capsys):
    images = make_tree(tmp_path / "one", classes=("cat",), per_class=4)
    out = tmp_path / "out"
    assert pipeline.main(["run", str(images), "--out", str(out), *FAST, "--workers", "0"]) == 2
    captured = capsys.readouterr()
    assert f"{images} holds only one class (cat); a classifier needs at least two" in captured.err
    assert "wrote" not in captured.out and not out.exists()


def test_backbone_names_match_the_backbones_table():
    from cnncodes.extract.backbones import BACKBONES
    from cnncodes.extract.names import BACKBONE_NAMES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)


# --- 23: --weights at a finetuned.pt, a classify run folder ------------------------------------------------

def test_weights_naming_a_finetuned_network_suggests_its_backbone(run, tree, tmp_path, capsys):
    out, _ = run
    args = ["extract", str(tree / "test"), "-o", str(tmp_path / "c.h5"), "--resize", "36", "--crop", "32",
            "--quiet", "--workers", "0", "--weights"]
    assert pipeline.main([*args, str(out / "finetuned.pt")]) == 2
    err = capsys.readouterr().err
    assert f"use --weights {out / 'backbone.pth'} (or the run folder {out})" in err
    renamed = tmp_path / "renamed.pt"  # the same bundle under another name is recognized by its contents
    renamed.write_bytes((out / "finetuned.pt").read_bytes())
    assert pipeline.main([*args, str(renamed)]) == 2
    assert "is a fine-tuned network with its new head" in capsys.readouterr().err
    assert not (tmp_path / "c.h5").exists()


def test_weights_naming_a_classify_run_folder_says_what_it_is(tmp_path, image_tree, capsys):
    run_dir = tmp_path / "svm"
    cnncodes.train(make_codes(tmp_path / "c.h5"), run_dir, cv=0, quiet=True)
    assert pipeline.main(["extract", str(image_tree), "-o", str(tmp_path / "x.h5"), "--weights", str(run_dir),
                          "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a `cnncodes classify` run folder" in err and "no such file" not in err


def test_a_wrong_checkpoint_names_the_reason_after_the_colon(tmp_path):
    import torch

    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.weights import WeightsNotFound, build_model, locate_weights

    state = build_model(get_backbone("mobilenet_v2"), locate_weights(get_backbone("mobilenet_v2"), "random"))
    ckpt = tmp_path / "short.pth"
    torch.save({k: v for k, v in state.state_dict().items() if not k.startswith("classifier")}, ckpt)
    bb = get_backbone("mobilenet_v2")
    with pytest.raises(WeightsNotFound, match=r"MobileNetV2: Missing key\(s\) in state_dict: \"classifier"):
        build_model(bb, locate_weights(bb, str(ckpt)))


# --- 24: the Python API ------------------------------------------------------------------------------------

def test_load_model_and_predict_on_either_kind_of_run(run, tree, tmp_path):
    out, _ = run
    bundle = cnncodes.load_model(out)
    assert bundle["kind"] == "finetuned" and bundle["class_names"] == ["cat", "dog"]
    assert not bundle["network"].training
    result = cnncodes.predict(out, tree / "test", tmp_path / "p.csv", workers=0, quiet=True)
    assert result["n_predicted"] == 12 and (tmp_path / "p.csv").is_file()
    codes_run = tmp_path / "svm"
    cnncodes.train(make_codes(tmp_path / "c.h5"), codes_run, cv=0, quiet=True)
    assert cnncodes.load_model(codes_run)["kind"] == "codes"
    assert cnncodes.predict(codes_run, tmp_path / "c.h5", tmp_path / "q.csv")["n_predicted"] > 0


def test_finetune_and_advise_take_the_command_line_names(tree, start_weights, tmp_path):  # noqa: F811
    options = {k: v for k, v in SMALL.items() if k != "progress"}
    report = cnncodes.finetune(tree, tmp_path / "ft", weights=str(start_weights), epochs=1, quiet=True,
                               no_augment=True, **options)
    assert report["classifier"] == "finetune" and report["finetune"]["options"]["augment"] is False
    advice = cnncodes.advise(tree, weights="random", resize=36, crop=32, sample=10, workers=0, quiet=True)
    assert advice["scenario"] in (1, 2, 3, 4)
    with pytest.raises(TypeError, match="give quiet or progress, not both"):
        cnncodes.train("c.h5", "r", quiet=True, progress=True)


# --- issue 23: exit 2 for usage errors only; a bug is exit 1 with its traceback in a file ----------------------

def test_an_unexpected_exception_is_exit_1_with_the_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    def broken(args):
        return {}["missing"]  # a bug, not the user's mistake

    monkeypatch.setattr(extract.cli, "cmd_info", broken)
    assert pipeline.main(["info", str(tmp_path / "c.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("cnncodes info: internal error (a bug")
    traceback_file = Path(re.search(r"traceback in (\S+)$", err).group(1))
    assert "KeyError: 'missing'" in traceback_file.read_text() and "broken" in traceback_file.read_text()
    traceback_file.unlink()


def test_usage_errors_stay_exit_2(tmp_path, monkeypatch, capsys):
    def refuses(args):
        raise UsageError("a clear line")

    monkeypatch.setattr(extract.cli, "cmd_info", refuses)
    assert pipeline.main(["info", "x.h5"]) == 2
    assert capsys.readouterr().err.strip() == "cnncodes info: error: a clear line"
    monkeypatch.undo()
    import h5py

    h5py.File(tmp_path / "other.h5", "w").close()  # HDF5, but not a codes file: our own ValueError
    assert pipeline.main(["info", str(tmp_path / "other.h5")]) == 2
    assert "not a cnncodes codes file" in capsys.readouterr().err


NAMES = ["cat", "dog", "bird"]
FAST_OPTIONS = dict(weights="random", resize=72, crop=64, workers=0, progress=False)


def test_import_cnncodes_loads_neither_torch_nor_sklearn():
    import subprocess
    import sys

    code = ("import sys, cnncodes\nprint(sorted(m for m in ('torch', 'sklearn', 'extract', 'classify') "
            "if m in sys.modules))\nprint(cnncodes.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pipeline.__file__.rsplit("/", 1)[0], check=True)
    assert done.stdout.splitlines()[0] == "[]" and done.stdout.splitlines()[1]


def test_load_codes_gives_numpy_by_layers_and_split_leaving_failed_rows_out(tmp_path):
    import cnncodes
    from cnncodes.extract import open_codes

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


def test_codes_transformer_in_a_sklearn_pipeline_gives_the_extracted_codes(tmp_path):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    import cnncodes
    from cnncodes.extract import open_codes

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


def test_the_docs_python_example_runs_as_written(tmp_path, monkeypatch):
    """docs/python-api.md's notebook-style example, run as written on a tiny digits-like tree (fast extraction)."""
    import re
    from pathlib import Path

    import cnncodes

    section = (Path(pipeline.__file__).parent / "docs" / "python-api.md").read_text()
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    make_tree(tmp_path / "data" / "digits", classes=("3", "7"), per_class=5, splits=("train", "test"))
    monkeypatch.chdir(tmp_path)
    real = cnncodes.extract_codes
    monkeypatch.setattr(cnncodes, "extract_codes", lambda source, out, **kw: real(source, out, **{**kw, **FAST_OPTIONS}))
    import cnncodes.classify.predict
    from cnncodes import classify
    predict_images = classify.predict.predict_images
    monkeypatch.setattr(classify.predict, "predict_images",
                        lambda *args, **kw: predict_images(*args, **{**kw, "workers": 0, "progress": False}))
    namespace: dict = {}
    exec(compile(example, "docs/python-api.md", "exec"), namespace)
    assert (tmp_path / "runs" / "api" / "model.joblib").is_file() and (tmp_path / "preds.csv").is_file()
    assert namespace["result"]["evaluation"]["n_evaluated"] == 10
    assert namespace["train"].X.shape[0] == 10 and set(namespace["pipe"].predict(namespace["test_paths"])) <= {"3", "7"}
