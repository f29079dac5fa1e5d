"""``--precision int8``: refused with one line where OpenVINO cannot quantize (nncf missing, a GPU, training);
the calibration sample (training rows, its digest in the recipe); and, where nncf is installed, codes that agree
with fp32, a quantized model kept in the cache, and the sample a trained model recorded reused by predict."""
from __future__ import annotations

import sys

import h5py
import json
import numpy as np
import pytest

import pipeline
from conftest import FAST, make_tree
from extract import quantize
from extract.errors import ExtractionError, UsageError

NNCF_MISSING = "nncf is not installed (pip install 'cnncodes[int8]'); the int8 network is not tested here"
INT8 = [a if a != "fp32" else "int8" for a in FAST]  # FAST with --precision int8


def test_int8_without_nncf_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed: find_spec finds nothing
    images = make_tree(tmp_path / "images", per_class=1)
    out = tmp_path / "c.h5"
    assert pipeline.main(["extract", str(images), "-o", str(out), *INT8]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith("--precision int8 needs nncf: pip install 'cnncodes[int8]'")
    assert not out.exists()
    import cnncodes

    with pytest.raises(UsageError, match="needs nncf"):
        cnncodes.extract_codes(images, out, precision="int8", weights="random")


def test_int8_is_refused_on_gpus_and_for_training(monkeypatch):
    from extract import device
    from extract.config import check_config
    from finetune.options import FinetuneConfig

    with pytest.raises(UsageError, match="int8 runs on the CPU"):
        device.check_extract_precision("int8", "cuda")
    with pytest.raises(UsageError, match="precision must be one of auto, fp32, bf16, fp16"):
        check_config(FinetuneConfig, {"precision": "int8"})


def test_calibration_takes_training_rows_and_its_digest_follows_the_files(tmp_path):
    from extract.reader import list_images

    images = make_tree(tmp_path / "images", per_class=5, splits=("train", "val"))
    listing = list_images(images)
    sample = quantize.calibration(listing, size=4)
    assert len(sample.rows) == 4 and {listing.splits[i] for i in sample.rows} == {"train"}
    assert sample == quantize.calibration(list_images(images), size=4)  # the same files: the same sample
    (images / listing.paths[sample.rows[-1]]).write_bytes((images / listing.paths[0]).read_bytes() + b"\0")
    assert quantize.calibration(list_images(images), size=4).digest != sample.digest
    unsplit = list_images(make_tree(tmp_path / "flat", per_class=3))
    assert len(quantize.calibration(unsplit).rows) == len(unsplit)  # no training split: every row


def test_a_recorded_sample_is_reused_and_needs_its_cached_model(tmp_path):
    from extract.reader import list_images

    listing = list_images(make_tree(tmp_path / "images", per_class=2))
    pinned = quantize.calibration_for(listing, {"precision": "int8", "calibration": "0123456789abcdef"})
    assert pinned.digest == "0123456789abcdef"
    with pytest.raises(ExtractionError, match="no longer in the converted-model cache"):
        pinned.images({"resize": 72, "crop": 64, "interpolation": "bilinear"})
    assert quantize.calibration_for(listing, {"precision": "fp32"}) == quantize.calibration(listing)


@pytest.mark.skipif(not quantize.available(), reason=NNCF_MISSING)
def test_int8_codes_agree_with_fp32_and_the_quantized_model_is_cached(tmp_path):
    from extract import extract_codes

    images = make_tree(tmp_path / "images", per_class=8, splits=("train", "val"))
    options = dict(weights="random", resize=72, crop=64, progress=False)
    extract_codes(images, tmp_path / "fp32.h5", precision="fp32", **options)
    first = extract_codes(images, tmp_path / "int8.h5", precision="int8", **options)
    assert first.runtime.startswith("cpu int8 openvino") and any("quantized on 16" in n for n in first.notes)
    again = extract_codes(images, tmp_path / "again.h5", precision="int8", **options)
    assert not any("quantized" in n for n in again.notes)  # read from the cache
    codes = {}
    for name in ("fp32", "int8", "again"):
        with h5py.File(tmp_path / f"{name}.h5") as h5:
            codes[name], recipe = h5["codes/penultimate"][()].astype(np.float64), json.loads(h5.attrs["recipe"])
    assert recipe["precision"] == "int8" and len(recipe["calibration"]) == 16
    a, b = codes["fp32"].ravel(), codes["int8"].ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.99
    assert np.array_equal(codes["int8"], codes["again"])
