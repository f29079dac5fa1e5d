"""Issue 23, item 1: each rule in one function, used by every command and by the Python API alike."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from codes_fixtures import make_codes
from conftest import FAST, make_tree

import cnncodes
import pipeline
from extract.errors import UsageError


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
