"""extract --views: each image's codes are the mean over its views (center + flip, or TenCrop), a recipe key."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from cnncodes import pipeline
from conftest import FAST, make_tree
from cnncodes.extract import extract_codes, open_codes
from cnncodes.extract.backbones import get_backbone
from cnncodes.extract.images import load_image, load_rgb
from cnncodes.extract.weights import RANDOM, WeightsInfo, build_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def eager_penultimate(crops: torch.Tensor) -> np.ndarray:
    """The untrained MobileNetV2's ReLU'd, averaged penultimate codes of uint8 crops [N, 3, H, W], in eager fp32."""
    model = build_model(get_backbone("mobilenet_v2"), WeightsInfo(RANDOM, RANDOM, ""))
    with torch.inference_mode():
        return torch.relu(model.features((crops.float() / 255 - MEAN) / STD)).mean((2, 3)).numpy()


def assert_close(got: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    """Equal up to ``tolerance`` of the largest code (an untrained network's codes are tiny: about 1e-9)."""
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got / scale, expected / scale, rtol=0, atol=tolerance)


def ten_crop(path, resize=72, crop=64) -> torch.Tensor:
    return torch.stack([TF.pil_to_tensor(v) for v in TF.ten_crop(TF.resize(load_rgb(path), resize, antialias=True),
                                                                  crop)])


@pytest.mark.parametrize("workers", ["0", "1"])  # both decoding paths: in the main process, and forked into slots
def test_two_views_are_the_mean_of_the_center_crop_and_its_flip(image_tree, tmp_path, workers):
    out = tmp_path / "codes.h5"
    # 12 images in batches of 5 images (10 crops): the last batch is short and padded
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--views", "2", "--batch-size", "5",
                          "--workers", workers, "--device", "cpu"]) == 0
    cf = open_codes(out)
    centers = torch.stack([load_image(image_tree / p, 72, 64) for p in cf.rows.paths])  # one view's preprocessing
    expected = (eager_penultimate(centers) + eager_penultimate(centers.flip(-1))) / 2
    assert cf.codes["penultimate"].shape == (12, 1280) and cf.recipe["views"] == 2
    assert_close(cf.codes["penultimate"], expected)
    with pytest.raises(AssertionError):  # not the center crop's codes alone
        assert_close(cf.codes["penultimate"], eager_penultimate(centers), 1e-2)


def test_the_python_api_takes_views_as_the_command_line_does(image_tree, tmp_path):
    import cnncodes

    out = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--views", "2", "--workers", "0"]) == 0
    cf = open_codes(out)
    transformer = cnncodes.CodesTransformer(weights="random", resize=72, crop=64, precision="fp32", workers=0, views=2)
    assert transformer.get_params()["views"] == 2
    assert_close(transformer.transform([image_tree / p for p in cf.rows.paths]), cf.codes["penultimate"], 1e-6)


def test_ten_views_give_one_row_per_image_the_mean_of_torchvisions_ten_crop(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    (image_tree / "cat" / "broken.png").write_bytes(b"not an image")  # its zero views are dropped, not averaged
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--views", "10", "--batch-size", "5",
                          "--workers", "1", "--device", "cpu"]) == 0
    cf = open_codes(out)
    assert cf.codes["penultimate"].shape == (13, 1280) and len(cf.rows.paths) == 13
    ok = cf.rows.ok
    assert ok.sum() == 12 and np.isnan(cf.codes["penultimate"][~ok]).all()
    expected = np.stack([eager_penultimate(ten_crop(image_tree / p)).mean(0) for p in cf.rows.paths[ok]])
    assert_close(cf.codes["penultimate"][ok], expected)
    assert pipeline.main(["info", str(out)]) == 0
    assert "views: 10" in capsys.readouterr().out


def test_a_file_with_other_views_is_refused_on_rerun_and_update_naming_views(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    common = ["extract", str(image_tree), "-o", str(out), *FAST, "--workers", "0"]
    assert pipeline.main(common) == 0
    before = out.read_bytes()
    capsys.readouterr()
    for extra in ([], ["--update"]):
        assert pipeline.main([*common, "--views", "2", *extra]) == 2
        assert "views: 1 in the file, 2 asked for" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert pipeline.main([*common, "--views", "1"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_file_made_before_views_existed_counts_as_one_view(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    common = ["extract", str(image_tree), "-o", str(out), *FAST, "--workers", "0"]
    assert pipeline.main(common) == 0
    with h5py.File(out, "r+") as h5:  # as an older release wrote it: no views in the recipe
        recipe = json.loads(h5.attrs["recipe"])
        del recipe["views"]
        h5.attrs["recipe"] = json.dumps(recipe)
    capsys.readouterr()
    assert pipeline.main(common) == 0
    assert "up to date" in capsys.readouterr().out
    assert pipeline.main([*common, "--views", "10"]) == 2
    assert "views: 1 in the file, 10 asked for" in capsys.readouterr().err


def test_bad_views_fail_before_any_work(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    with pytest.raises(SystemExit) as usage:
        pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--views", "3"])
    assert usage.value.code == 2 and "--views: invalid choice: 3" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--views must be one of 1, 2, 10"):
        extract_codes(image_tree, out, weights="random", views=5)
    assert not out.exists()


def test_predict_extracts_new_images_with_the_models_views(tmp_path, capsys):
    images = make_tree(tmp_path / "images", per_class=6, splits=("train", "test"))
    run = tmp_path / "run"
    assert pipeline.main(["run", str(images), "--out", str(run), *FAST, "--views", "2", "--workers", "0",
                          "--classifiers", "softmax", "--cv", "2"]) == 0
    kept = tmp_path / "new.h5"
    assert pipeline.main(["predict", str(run / "classify"), str(images / "test"), "-o", str(tmp_path / "p.csv"),
                          "--codes-out", str(kept), "--workers", "0", "--quiet"]) == 0
    new, trained_on = open_codes(kept), open_codes(run / "codes.h5")
    assert new.recipe["views"] == 2
    rows = {p: i for i, p in enumerate(trained_on.rows.paths)}
    same = [rows[f"test/{p}"] for p in new.rows.paths]
    assert_close(new.codes["penultimate"], trained_on.codes["penultimate"][same], 1e-6)
    one_view = tmp_path / "one_view.h5"
    assert pipeline.main(["extract", str(images), "-o", str(one_view), *FAST, "--workers", "0"]) == 0
    capsys.readouterr()
    assert pipeline.main(["predict", str(run / "classify"), str(one_view), "-o", str(tmp_path / "q.csv")]) == 2
    assert "views: 1 in the file, 2 asked for" in capsys.readouterr().err
