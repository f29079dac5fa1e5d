"""Options are checked at the command line's boundary: an out-of-range number or an impossible combination is
one clear line and exit 2, before any image is read or any file written."""
from __future__ import annotations

import pytest

from cnncodes import pipeline
from conftest import make_tree


@pytest.mark.parametrize("command,option,value,message", [
    ("extract", "--batch-size", "-3", "must be a whole number >= 1, got -3"),
    ("extract", "--batch-size", "0", "must be a whole number >= 1, got 0"),
    ("extract", "--crop", "0", "must be a whole number >= 1, got 0"),
    ("extract", "--resize", "0", "must be a whole number >= 1, got 0"),
    ("extract", "--part-size", "0", "must be a whole number >= 1, got 0"),
    ("extract", "--workers", "-1", "must be a whole number >= 0, got -1"),
    ("classify", "--C", "-1", "must be a positive number, got -1"),
    ("classify", "--cv", "1", "must be 0 (no cross-validation) or at least 2 folds, got 1"),
    ("classify", "--test-fraction", "1.5", "must be a fraction between 0 and 1 (exclusive), got 1.5"),
    ("compare", "--cv", "-2", "or at least 2 folds, got -2"),
    ("layers", "--crop", "0", "must be a whole number >= 1, got 0"),
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


@pytest.mark.parametrize("argv, message", [
    (["advise", "IMAGES", "--crop", "0"], "argument --crop: must be a whole number >= 1, got 0"),
    (["finetune", "IMAGES", "--out", "OUT", "--workers", "-1"], "argument --workers: must be a whole number >= 0"),
    (["finetune", "IMAGES", "--out", "OUT", "--resize", "0"], "argument --resize: must be a whole number >= 8, got 0"),
    # the parser's type is the config's constraint (>= 8), not a looser copy of it (>= 1)
    (["finetune", "IMAGES", "--out", "OUT", "--crop", "5"], "argument --crop: must be a whole number >= 8, got 5"),
])
def test_finetune_and_advise_numbers_get_the_same_one_line_checks(argv, message, tmp_path, capsys):
    images = make_tree(tmp_path / "images")
    argv = [str(images) if a == "IMAGES" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
