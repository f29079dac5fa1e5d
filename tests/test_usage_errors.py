"""Issue 23: exit 2 only for usage errors. Bad user input raises UsageError (a ValueError) where it is checked;
any other exception, a plain ValueError raised inside cnncodes included, is a bug: exit 1, its traceback in a file."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from codes_fixtures import make_codes
from conftest import ROOT, make_tree

import cnncodes.extract.codesfile

from cnncodes import extract
from cnncodes import pipeline
from cnncodes.extract.errors import UsageError
from cnncodes.finetune.budget import epochs_for

PRODUCT = [*(p for d in ("extract", "classify", "finetune", "advise") for p in sorted((ROOT / d).glob("*.py"))),
           ROOT / "pipeline.py", ROOT / "api.py", ROOT / "__init__.py"]
PLAIN = {"ValueError", "KeyError"}
# The plain ValueErrors left: internal invariants (a caller's bug, never the user's input), by (file, function).
INTERNAL = {
    ("advise/commands.py", "recommend"), ("advise/evidence.py", "imagenet_logits"),
    ("advise/transferability.py", "explained_fraction"), ("classify/linear_svm.py", "fit"),
    ("extract/fusion.py", "fold_batchnorm"), ("extract/images.py", "views_of"), ("extract/images.py", "_five_crops"),
    ("extract/inference.py", "_compiled"),
    ("extract/inference.py", "check_agreement"), ("extract/inference.py", "_missing"),
    ("finetune/budget.py", "epochs_for"), ("finetune/budget.py", "step_sized_epochs"), ("finetune/model.py", "head_name"),
}


def _plain_raises(path: Path):
    """(file, innermost function) of every ``raise ValueError(...)`` / ``raise KeyError(...)`` in ``path``."""
    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Raise) and getattr(getattr(child.exc, "func", None), "id", None) in PLAIN:
                yield path.relative_to(ROOT).as_posix(), where
            yield from visit(child, child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where)
    return visit(ast.parse(path.read_text()), "<module>")


def test_bad_input_raises_usage_error_and_plain_value_errors_are_left_to_internal_invariants():
    found = {site for path in PRODUCT for site in _plain_raises(path)}
    assert ("finetune/budget.py", "epochs_for") in found  # the scan sees raises
    assert found - INTERNAL == set(), "bad user input raises UsageError; else add the internal invariant here"
    assert issubclass(UsageError, ValueError)  # Python callers catching ValueError keep working


def test_a_value_error_raised_inside_cnncodes_is_a_bug_exit_1_with_its_traceback(tmp_path, monkeypatch, capsys):
    codes = make_codes(tmp_path / "c.h5")
    # an invariant broken inside cnncodes' own code while reading a good file: a plain ValueError from budget.py
    monkeypatch.setattr(extract.codesfile, "read_rows", lambda h5: epochs_for(0, 1, 1.0, 1.0))
    assert pipeline.main(["info", str(codes)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("cnncodes info: internal error (a bug")
    assert "ValueError: epochs_for needs n_train >= 1" in err
    traceback_file = Path(re.search(r"traceback in (\S+)$", err).group(1))
    assert "finetune/budget.py" in traceback_file.read_text() and "<lambda>" in traceback_file.read_text()
    traceback_file.unlink()


@pytest.mark.parametrize("command, message", [
    (["classify", "{codes}", "--out", "{out}", "--class-weight", "cat=-1", "--quiet"],
     "class weight for 'cat' must be positive"),
    (["classify", "{codes}", "--out", "{out}", "--layer", "fc7", "--quiet"],
     "has no layer fc7; available layers: block4"),
    (["extract", "{manifest}", "-o", "{out}", "--weights", "random", "--quiet"], "looks like a header"),
])
def test_bad_input_is_exit_2_in_one_line_and_writes_nothing(tmp_path, capsys, command, message):
    make_tree(tmp_path / "images", per_class=1)
    (tmp_path / "list.csv").write_text("picture,kind\nimages/cat/img_000.png,cat\n")
    paths = dict(codes=make_codes(tmp_path / "c.h5"), out=tmp_path / "out", manifest=tmp_path / "list.csv")
    assert pipeline.main([part.format(**paths) for part in command]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"cnncodes {command[0]}: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_every_message_quotes_a_reason_as_one_shortened_line():
    """codesfile.short is the one rule: white space runs (newlines of a library's message included) become one
    space, and what is longer than the limit ends in '...'."""
    from cnncodes.extract.codesfile import short

    assert short("cannot load:\n  truncated\tfile  ") == "cannot load: truncated file"
    assert short("x" * 300, 200) == "x" * 197 + "..."
    assert short({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
    sources = [p for d in ("extract", "classify", "finetune", "advise") for p in (ROOT / d).glob("*.py")]
    hand_cut = [p.name for p in sources + [ROOT / "pipeline.py"] if ".split())[:" in p.read_text(encoding="utf-8")]
    assert hand_cut == []
