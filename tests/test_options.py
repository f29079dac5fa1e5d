"""Issue 23 items 2 and 3: options declared once (a config per command, from which the parsers' defaults and
choices come, checked by the command line and the Python API before torch loads), and the Python API taking
the command line's names."""
from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import fields

import pytest
from conftest import ROOT

from cnncodes import pipeline
from cnncodes.advise.options import AdviseConfig
from cnncodes.classify.options import ClassifyConfig, CompareConfig
from cnncodes.extract.config import defaults
from cnncodes.extract.options import ExtractConfig
from cnncodes.finetune.options import FinetuneConfig

CONFIGS = {"extract": [ExtractConfig], "run": [ExtractConfig, CompareConfig], "finetune": [FinetuneConfig],
           "advise": [AdviseConfig], "classify": [ClassifyConfig], "compare": [CompareConfig]}
# the command line's None where the library has a value: --layer unset taps the penultimate layer; --freeze
# unset is 1/3 unless --freeze-until names the last frozen layer instead; run compares two classifiers
CLI_DECIDES = {("extract", "layers"), ("run", "layers"), ("finetune", "freeze"), ("run", "classifiers")}
CLI_ONLY = {"strict", "json", "out"}  # the exit code, the output's format; --out is the functions' positional


def _keyword(command: str, dest: str) -> str:
    """The library keyword of a command-line option (cnncodes.CLI_NAMES maps the names as typed)."""
    return {"quiet": "progress"}.get(dest, "out_dir" if (command, dest) == ("advise", "out") else dest)


def _parsers() -> dict:
    sub = next(a for a in pipeline.build_parser()._actions if a.dest == "command")
    return sub.choices


def _options(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help",)}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_parser_defaults_and_choices_come_from_the_config(command):
    options = _options(_parsers()[command])
    declared = {f.name: f for config in CONFIGS[command] for f in fields(config)}
    for dest, action in options.items():
        name = _keyword(command, dest)
        if name not in declared or (command, name) in CLI_DECIDES:
            continue
        expected = not declared[name].default if dest == "quiet" else declared[name].default
        if dest == "classifiers":  # typed comma-separated
            expected = ",".join(expected)
        assert action.default == expected, (command, dest)
        if declared[name].metadata["choices"] is not None:
            assert tuple(action.choices) == declared[name].metadata["choices"], (command, dest)


def _library_functions() -> dict:
    from cnncodes.advise.advisor import advise_images
    from cnncodes.extract.runner import extract_codes
    from cnncodes.finetune.train import finetune_images

    from cnncodes.classify.compare import compare
    from cnncodes.classify.train import classify_codes

    return {ExtractConfig: extract_codes, FinetuneConfig: finetune_images, AdviseConfig: advise_images,
            ClassifyConfig: classify_codes, CompareConfig: compare}


@pytest.mark.parametrize("config", [ExtractConfig, FinetuneConfig, AdviseConfig, ClassifyConfig, CompareConfig],
                         ids=lambda c: c.__name__)
def test_the_library_keywords_and_defaults_are_the_configs(config):
    signature = inspect.signature(_library_functions()[config]).parameters
    for name, default in defaults(config).items():
        assert name in signature and signature[name].default == default, name


def test_classify_names_are_the_estimators_and_the_parsers_choices():
    from cnncodes.classify import models, options

    assert options.CLASSIFIER_NAMES == tuple(models.CLASSIFIERS)
    parser = _options(_parsers()["classify"])
    assert set(parser["normalize"].choices) == set(options.NORMALIZE)
    assert tuple(parser["sampling"].choices) == options.SAMPLING
    assert tuple(parser["classifier"].choices) == options.CLASSIFIER_NAMES


@pytest.mark.parametrize("command, function", [
    ("extract", "cnncodes.extract.runner:extract_codes"), ("classify", "cnncodes.classify.train:classify_codes"),
    ("compare", "cnncodes.classify.compare:compare"), ("predict", "cnncodes.finetune.predict:predict_images"),
    ("finetune", "cnncodes.finetune.train:finetune_images"), ("advise", "cnncodes.advise.advisor:advise_images"),
    ("export", "cnncodes.extract.export:export_codes"),
])
def test_every_option_is_a_python_keyword_with_the_command_lines_name(command, function):
    """The README's promise: the Python API takes the command line's option names with underscores."""
    import importlib

    module, name = function.split(":")
    keywords = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    for dest in _options(_parsers()[command]):
        if dest not in CLI_ONLY or (command, dest) == ("advise", "out"):
            assert _keyword(command, dest) in keywords, (command, dest)


@pytest.mark.parametrize("call, message", [
    ("cnncodes.extract_codes('x', 'y.h5', batch_size=0)", "--batch-size must be a whole number >= 1, got 0"),
    ("cnncodes.extract_codes('x', 'y.h5', pool='mean')", "--pool must be one of avg, max, none, got 'mean'"),
    ("cnncodes.extract_codes('x', 'y.h5', backbone='resnet9')", "unknown backbone 'resnet9'"),
    ("cnncodes.advise('x', sample=3)", "--sample must be a whole number of at least 10, got 3"),
    ("cnncodes.advise('x', workers=-1)", "--workers must be a whole number >= 0, got -1"),
])
def test_the_python_api_checks_options_before_torch_is_imported(call, message):
    code = (f"import sys, cnncodes\ntry:\n    {call}\nexcept ValueError as err:\n"
            "    print(type(err).__name__, '|', err, '|', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    kind, text, torch_loaded = done.stdout.strip().split(" | ")
    assert kind == "UsageError" and text.startswith(message) and torch_loaded == "False"


def test_advise_options_fail_before_torch_is_imported(tmp_path):
    code = ("import sys\nfrom cnncodes import pipeline\nrc = pipeline.main(sys.argv[1:])\n"
            "print(rc, 'torch' in sys.modules, 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, "advise", str(tmp_path), "--sample", "3"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.split() == ["2", "False", "False"]
    assert done.stderr.strip() == "cnncodes advise: error: --sample must be a whole number of at least 10, got 3"


def test_each_stage_registers_its_own_commands():
    from cnncodes.advise import cli as advise_cli
    from cnncodes.classify import cli as classify_cli
    from cnncodes.extract import cli as extract_cli
    from cnncodes.finetune import cli as finetune_cli

    parsers = _parsers()
    owners = {"extract": extract_cli, "assemble": extract_cli, "info": extract_cli, "export": extract_cli,
              "layers": extract_cli, "dataset": extract_cli, "classify": classify_cli, "compare": classify_cli,
              "predict": classify_cli, "run": classify_cli, "finetune": finetune_cli, "advise": advise_cli}
    for command, module in owners.items():
        assert parsers[command].get_default("func").__module__ == module.__name__, command


@pytest.mark.parametrize("options, message", [
    (dict(C=-1.0), "--C must be a positive number, got -1.0"),
    (dict(cv=1), "--cv must be 0 (no cross-validation) or at least 2 folds, got 1"),
    (dict(normalize="zscore"), "unknown normalization 'zscore'; choose one of power, l2, standard, none"),
    (dict(max_iter=0), "max_iter must be a positive number of iterations, got 0"),
])
def test_classify_checks_its_options_once_before_reading_the_codes(tmp_path, options, message):
    """One rule per option (classify/options.py), applied before the file is opened: a missing file is not
    what the error names, and nothing is written."""
    from cnncodes.classify import classify_codes
    from cnncodes.extract.errors import UsageError

    with pytest.raises(UsageError) as err:
        classify_codes(tmp_path / "missing.h5", tmp_path / "run", **options)
    assert str(err.value) == message and not (tmp_path / "run").exists()
