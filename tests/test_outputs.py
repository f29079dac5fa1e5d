"""The output guard of every writing command (extract/outputs.py): never inside the images, one writer per
output, no replacing another run's output without --overwrite (never a file of the run used), and no
folder left behind by an error."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import cnncodes
from cnncodes import pipeline
from cnncodes.classify import classify_codes, load_model
from codes_fixtures import make_codes
from conftest import FAST, ROOT, make_tree
from cnncodes.extract.errors import ExtractionError

FT = ["--weights", "random", "--resize", "36", "--crop", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
      "--threads", "1", "--quiet"]


def _main(capsys, *argv) -> tuple[int, str]:
    code = pipeline.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.fixture
def codes_run(tmp_path) -> tuple[Path, Path]:
    """A codes file and a classify run trained on it."""
    codes = make_codes(tmp_path / "codes.h5")
    run = tmp_path / "svm"
    classify_codes(codes, run, cv=0, C=1.0, progress=False)
    return codes, run


@pytest.mark.parametrize("command", ["extract", "run", "finetune", "advise", "predict"])
def test_every_command_refuses_an_output_inside_the_images(tmp_path, capsys, codes_run, command):
    images = make_tree(tmp_path / "images", per_class=3)
    before = _files(images)
    argv = {"extract": ["extract", images, "-o", images / "codes.h5", *FAST],
            "run": ["run", images, "--out", images / "run", *FAST],
            "finetune": ["finetune", images, "--out", images / "cat" / "ft", *FT],
            "advise": ["advise", images, "--out", images / "adv", *FAST],
            "predict": ["predict", codes_run[1], images, "-o", images / "p.csv", "--quiet"]}[command]
    code, err = _main(capsys, *argv)
    assert code == 2 and f"cnncodes {command}: error: " in err and "\n" not in err
    assert "is inside the image folder" in err
    assert _files(images) == before  # nothing written among the images, not even a folder


def test_predict_replaces_a_file_only_with_overwrite_and_never_a_file_of_the_run(tmp_path, capsys, codes_run):
    codes, run = codes_run
    csv = tmp_path / "p.csv"
    csv.write_text("keep me\n")
    code, err = _main(capsys, "predict", run, codes, "-o", csv, "--quiet")
    assert code == 2 and "p.csv exists" in err and "--overwrite" in err and "\n" not in err
    assert csv.read_text() == "keep me\n"
    with pytest.raises(ValueError, match="exists"):
        cnncodes.predict(run, codes, csv)
    assert csv.read_text() == "keep me\n"
    assert _main(capsys, "predict", run, codes, "-o", csv, "--overwrite", "--quiet")[0] == 0
    assert csv.read_text().startswith("path,predicted")

    report = (run / "report.json").read_bytes()
    code, err = _main(capsys, "predict", run, codes, "-o", run / "report.json", "--overwrite", "--quiet")
    assert code == 2 and "is a file of the run" in err and "\n" not in err
    assert (run / "report.json").read_bytes() == report


class _Holder:
    """Another process holding the output's lock, as a run writing it does, until it is closed."""

    def __init__(self, out: Path):
        code = ("import sys; from pathlib import Path; from cnncodes.extract.lock import output_lock\n"
                "with output_lock(Path(sys.argv[1]).resolve()):\n"
                "    print('held', flush=True); sys.stdin.read()")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout.readline().strip() == "held"

    def close(self) -> None:
        self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0


def test_a_second_finetune_into_one_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=3)
    out = tmp_path / "ft"
    holder = _Holder(out)
    try:
        code, err = _main(capsys, "finetune", images, "--out", out, *FT)
        assert code == 2 and "\n" not in err
        assert f"{out} is being written by another run (process {holder.proc.pid} on {socket.gethostname()})" in err
        assert not out.exists()
    finally:
        holder.close()
    assert _main(capsys, "finetune", images, "--out", out, *FT)[0] == 0  # once it is done, the folder is free
    assert (out / "finetuned.pt").is_file()


@pytest.mark.parametrize("writer", ["classify", "compare", "predict"])
def test_the_python_api_holds_the_same_lock(tmp_path, codes_run, writer):
    codes, run = codes_run
    out = tmp_path / "out"
    call = {"classify": lambda: cnncodes.train(codes, out, cv=0, progress=False),
            "compare": lambda: cnncodes.compare(codes, out, classifiers=["svm"], cv=0, progress=False),
            "predict": lambda: cnncodes.predict(run, codes, out)}[writer]
    holder = _Holder(out)
    try:
        with pytest.raises(ExtractionError, match="is being written by another run"):
            call()
    finally:
        holder.close()
    assert not out.exists()


def test_finetune_resumes_its_own_folder_and_refuses_another_runs(tmp_path, capsys, codes_run):
    images = make_tree(tmp_path / "images", per_class=3)
    out = tmp_path / "ft"
    assert _main(capsys, "finetune", images, "--out", out, *FT)[0] == 0
    assert _main(capsys, "finetune", images, "--out", out, *FT)[0] == 0  # the same run: it resumes (done already)
    report = (out / "report.json").read_bytes()
    code, err = _main(capsys, "predict", out, images, "-o", out / "report.json", "--overwrite", "--quiet")
    assert code == 2 and "is a file of the run" in err and (out / "report.json").read_bytes() == report
    _, run = codes_run
    model = (run / "model.joblib").read_bytes()
    code, err = _main(capsys, "finetune", images, "--out", run, *FT)
    assert code == 2 and "already holds a trained model" in err and "--overwrite" in err and "\n" not in err
    assert (run / "model.joblib").read_bytes() == model and not (run / "finetuned.pt").exists()
    assert _main(capsys, "finetune", images, "--out", run, *FT, "--overwrite")[0] == 0
    assert (run / "finetuned.pt").is_file()


def test_advise_refuses_to_reuse_a_folder_unless_overwrite(tmp_path, capsys):
    images = make_tree(tmp_path / "images", classes=("a", "b"), per_class=5)
    out = tmp_path / "adv"
    assert _main(capsys, "advise", images, "--out", out, *FAST)[0] == 0
    (out / "try-finetune-0.3").mkdir()  # what an earlier --try left
    advice = (out / "advice.json").read_bytes()
    code, err = _main(capsys, "advise", images, "--out", out, "--seed", "1", *FAST)
    assert code == 2 and "already holds advice" in err and "--overwrite" in err and "\n" not in err
    assert (out / "advice.json").read_bytes() == advice
    assert _main(capsys, "advise", images, "--out", out, "--seed", "1", "--overwrite", *FAST)[0] == 0
    assert json.loads((out / "advice.json").read_text())["images"] == str(images)
    assert not (out / "try-finetune-0.3").exists()  # the replaced advice's trial goes with it


@pytest.mark.parametrize("case", ["finetune one class", "finetune empty folder", "finetune missing path",
                                  "advise one class", "run empty folder", "classify missing codes"])
def test_errors_leave_no_output_folder_behind(tmp_path, capsys, case):
    one = make_tree(tmp_path / "one", classes=("a",), per_class=3)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "new" / "deeper" / "out"
    argv = {"finetune one class": ["finetune", one, "--out", out, *FT],
            "finetune empty folder": ["finetune", tmp_path / "empty", "--out", out, *FT],
            "finetune missing path": ["finetune", tmp_path / "missing", "--out", out, *FT],
            "advise one class": ["advise", one, "--out", out, *FAST],
            "run empty folder": ["run", tmp_path / "empty", "--out", out, *FAST],
            "classify missing codes": ["classify", tmp_path / "missing.h5", "--out", out, "--quiet"]}[case]
    code, err = _main(capsys, *argv)
    assert code == 2 and "\n" not in err
    assert not (tmp_path / "new").exists()  # neither the folder nor the parents made for it


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


def _relative_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_dataset_refuses_a_non_empty_folder(tmp_path, capsys):
    target = make_tree(tmp_path / "images", per_class=1)
    before = _relative_files(target)
    assert pipeline.main(["dataset", "digits", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnncodes dataset: error:") and "--overwrite" in err and "\n" not in err
    assert _relative_files(target) == before


def test_dataset_overwrite_replaces_whole_folder_without_leakage(tmp_path):
    from cnncodes.extract.datasets import write_digits

    target = make_tree(tmp_path / "digits", per_class=1)  # stale files that must not survive
    write_digits(target, test_fraction=0.3, per_class=10, overwrite=True)
    write_digits(target, test_fraction=0.5, per_class=10, overwrite=True)
    files = _relative_files(target)
    assert not any(f.startswith(("cat/", "dog/")) for f in files)
    train = {f.split("/", 1)[1] for f in files if f.startswith("train/")}
    test = {f.split("/", 1)[1] for f in files if f.startswith("test/")}
    assert len(train) == len(test) == 50 and not train & test
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no staging or old folder left beside it


def test_output_at_the_image_folder_is_refused(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=1)
    assert pipeline.main(["extract", str(images), "-o", str(images), *FAST]) == 2
    err = capsys.readouterr().err
    assert "is a folder; -o names the codes file to write" in err and "--overwrite" not in err
    assert pipeline.main(["run", str(images), "--out", str(images / "run"), *FAST]) == 2
    assert "inside the image folder" in capsys.readouterr().err
    assert not (images / "run").exists()
