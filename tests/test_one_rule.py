"""Issue 23, item 1: each rule in one function (the layer syntax, the device and precision policy, the report,
the option checks), used by every command and by the Python API alike."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from codes_fixtures import make_codes
from conftest import FAST, ROOT, make_tree
from test_finetune import run, start_weights, tree  # noqa: F401  (fixtures: a fine-tuned two-class run)

import cnncodes
from cnncodes import pipeline
from cnncodes.classify.report import REPORT_SETTINGS
from cnncodes.extract.errors import UsageError


# --- the layer syntax (extract.names.layer_runs) ----------------------------------------------------------

def test_load_codes_reads_the_layer_syntax_as_the_command_line(tmp_path):
    codes = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(make_tree(tmp_path / "images")), "-o", str(codes), *FAST, "--workers", "0",
                          "--layer", " block4 , penultimate "]) == 0
    both = cnncodes.load_codes(codes, "block4 + penultimate")
    np.testing.assert_array_equal(both.X, np.hstack([cnncodes.load_codes(codes, t).X for t in ("block4", "penultimate")]))
    np.testing.assert_array_equal(both.X, cnncodes.load_codes(codes, ["block4", " penultimate"]).X)
    assert pipeline.main(["classify", str(codes), "--out", str(tmp_path / "cli"), "--quiet",
                          "--layer", "block4 + penultimate"]) == 0
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["layers"] == ["block4", "penultimate"]
    assert cnncodes.train(codes, tmp_path / "api", layers="block4 + penultimate", quiet=True)["layers"] == report["layers"]


@pytest.mark.parametrize("layers", ["a, b", "a +", ["a", " "]])
def test_a_layer_text_that_is_not_one_concatenation_is_one_clear_usage_error(tmp_path, layers):
    codes = make_codes(tmp_path / "codes.h5")
    with pytest.raises(UsageError, match="layers .*(a comma separates runs|an empty entry)"):
        cnncodes.load_codes(codes, layers)


def test_the_api_extracts_every_tap_its_layer_values_name_as_the_command_line(tmp_path):
    cnncodes.extract_codes(make_tree(tmp_path / "images", per_class=2), tmp_path / "c.h5",
                           layers=["block4 + penultimate"], weights="random", resize=72, crop=64, precision="fp32",
                           workers=0, progress=False)
    with h5py.File(tmp_path / "c.h5", "r") as h5:
        assert sorted(h5["codes"]) == ["block4", "penultimate"]


# --- the device and precision policy (extract.device) -----------------------------------------------------

def test_the_device_policy_loads_without_torch_for_the_option_checks():
    code = "import sys, cnncodes.extract.device, cnncodes.finetune.options, cnncodes.pipeline\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"
    from cnncodes.extract.config import check_config, choices
    from cnncodes.extract.device import PRECISIONS
    from cnncodes.finetune.options import FinetuneConfig

    def accepted(precision: str) -> bool:
        try:
            check_config(FinetuneConfig, {"precision": precision})
        except UsageError:
            return False
        return True

    assert [p for p in PRECISIONS + ("fp8",) if accepted(p)] == list(PRECISIONS)
    assert choices(FinetuneConfig, "precision") is PRECISIONS  # the parser's choices: the policy's own tuple


def test_one_precision_policy_for_inference_and_training(monkeypatch):
    from cnncodes.extract import device

    cpu = torch.device("cpu")
    monkeypatch.setenv(device.CAPABILITIES_ENV, "BF16,FP32")
    assert device.pick_precision("auto", cpu) == "bf16"  # inference: native bf16 is faster
    assert device.pick_precision("auto", cpu, training=True) == "fp32"
    assert device.mixed_precision(cpu, "bf16") == (torch.bfloat16, False)
    assert device.pick_precision("auto", torch.device("cuda"), bf16_supported=False) == "fp16"
    assert device.mixed_precision(torch.device("cuda"), bf16_supported=False) == (torch.float16, True)
    for pick in (lambda: device.pick_precision("fp16", cpu), lambda: device.mixed_precision(cpu, "fp16")):
        with pytest.raises(UsageError, match="^--precision fp16 is for GPUs; on the CPU use fp32 or bf16$"):
            pick()


# --- the report (classify.report.build_report) ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:alpha was chosen on too few rows")  # a 1-byte budget samples little
def test_codes_streamed_and_finetuned_reports_have_the_same_keys_in_the_same_order(run, tmp_path):
    codes = make_codes(tmp_path / "codes.h5")
    in_memory = cnncodes.train(codes, tmp_path / "memory", cv=2, quiet=True)
    streamed = cnncodes.train(codes, tmp_path / "streamed", cv=2, max_memory=1, quiet=True)  # streams
    assert streamed["hyperparameter"].endswith("streamed SGD") and list(streamed) == list(in_memory)
    _, tuned = run
    assert list(tuned) == list(in_memory) + ["val_balanced_accuracy", "finetune"]
    assert set(REPORT_SETTINGS) <= set(in_memory)


# --- the shared option checks (extract.checks), at the boundary ------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(classifier="knn", C=-1.0), "--C must be a positive number, got -1.0"),  # knn has no C: refused all the same
    (dict(C=float("inf")), "--C must be a positive number, got inf"),
    (dict(cv=1), "--cv must be 0 (no cross-validation) or at least 2 folds, got 1"),
    (dict(test_fraction=1.0), "--test-fraction must be a fraction between 0 and 1 (exclusive), got 1.0"),
])
def test_train_and_compare_refuse_a_bad_option_alike_before_any_work(tmp_path, options, message):
    codes = make_codes(tmp_path / "codes.h5")
    classifier = options.pop("classifier", "svm")
    calls = [lambda: cnncodes.train(codes, tmp_path / "out", classifier=classifier, **options, quiet=True),
             lambda: cnncodes.train(codes, tmp_path / "out", classifier=classifier, max_memory=1, **options, quiet=True),
             lambda: cnncodes.compare(codes, tmp_path / "out", classifiers=(classifier,), **options, progress=False)]
    for call in calls:
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            call()
        assert not (tmp_path / "out").exists()


def test_the_command_line_and_the_api_share_one_shard_and_dtype_check(tmp_path, capsys):
    from cnncodes.extract.checks import check

    with pytest.raises(UsageError, match=r"^--shard must be R/N with 0 <= R < N, got 2/2$"):
        cnncodes.extract_codes(make_tree(tmp_path / "images", per_class=1), tmp_path / "c.h5", shard=(2, 2))
    with pytest.raises(UsageError, match="^--dtype must be float32 or float16, got 'float64'$"):
        check("dtype", "float64")
    with pytest.raises(SystemExit):
        pipeline.main(["extract", "x", "-o", str(tmp_path / "c.h5"), "--shard", "2/2"])
    assert "argument --shard: must be R/N with 0 <= R < N (shard R of N), got '2/2'" in capsys.readouterr().err
    assert not (tmp_path / "c.h5").exists()
