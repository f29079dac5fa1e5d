"""Extract stage: taps, codes values, the HDF5 contract, inputs and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import weakref

import h5py
import numpy as np
import pytest
import torch

from cnncodes import pipeline
from conftest import FAST, ROOT, make_tree
from cnncodes.extract import extract_codes, open_codes
from cnncodes.extract.backbones import BACKBONES, get_backbone
from cnncodes.extract.images import load_image
from cnncodes.extract.taps import resolve_taps
from cnncodes.extract.weights import RANDOM, WeightsInfo, build_model


def random_model(name: str) -> torch.nn.Module:
    return build_model(get_backbone(name), WeightsInfo(RANDOM, RANDOM, ""))


def batch_of(tree, paths, resize=72, crop=64) -> torch.Tensor:
    """The normalized input batch the extractor builds, made by hand from the same files."""
    images = torch.stack([load_image(tree / p, resize, crop) for p in paths]).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_alias_resolves_to_a_non_negative_layer(name):
    backbone = get_backbone(name)
    model = random_model(name)
    taps = resolve_taps(backbone, model, list(backbone.aliases), "avg", crop=64)
    assert "penultimate" in backbone.aliases
    assert [t.name for t in taps] == list(backbone.aliases)
    from cnncodes.extract.taps import TapModel

    with torch.inference_mode():
        out = TapModel(model, taps)(torch.randn(2, 3, 64, 64))
    for tap in taps:
        assert out[tap.name].shape == (2, tap.dim)
        assert (out[tap.name] >= 0).all(), tap.name
    if name in ("alexnet", "vgg16"):
        assert {t.dim for t in taps if t.name in ("fc6", "fc7")} == {4096}


def test_mobilenet_block_alias_taps_inner_relu6_not_the_linear_bottleneck():
    backbone = get_backbone("mobilenet_v2")
    model = random_model("mobilenet_v2")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        h = model.features[:10](x)
        inner = model.features[10].conv[1](model.features[10].conv[0](h))
        block_output = model.features[10](h)
    assert (block_output < 0).any()  # the block output is a linear bottleneck: not a valid CNN code
    assert (inner >= 0).all() and (inner <= 6).all()
    (tap,) = resolve_taps(backbone, model, ["block4"], "avg", crop=64)
    assert tap.node == "features.10.conv.1" and tap.dim == inner.shape[1]


def test_codes_equal_a_hand_written_forward(image_tree, tmp_path):
    out = tmp_path / "codes.h5"
    args = ["extract", str(image_tree), "-o", str(out), *FAST, "--layer", "block4", "--layer", "penultimate",
            "--workers", "1", "--batch-size", "5"]
    assert pipeline.main(args) == 0
    cf = open_codes(out)
    model = random_model("mobilenet_v2")
    x = batch_of(image_tree, cf.rows.paths)
    with torch.inference_mode():
        h = model.features[:10](x)
        block4 = model.features[10].conv[1](model.features[10].conv[0](h)).mean((2, 3))
        penultimate = torch.relu(model.features(x)).mean((2, 3))
    np.testing.assert_allclose(cf.codes["block4"], block4.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cf.codes["penultimate"], penultimate.numpy(), rtol=1e-4, atol=1e-5)
    assert (cf.codes["penultimate"] >= 0).all() and cf.codes["penultimate"].shape == (12, 1280)


@pytest.mark.parametrize("name,layer", [("alexnet", "fc7"), ("resnet18", "penultimate")])
def test_codes_equal_hand_forward_on_other_backbones(image_tree, tmp_path, name, layer):
    out = tmp_path / f"{name}.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--backbone", name,
                          "--layer", layer, "--workers", "0"]) == 0
    cf = open_codes(out)
    model = random_model(name)
    x = batch_of(image_tree, cf.rows.paths)
    with torch.inference_mode():
        if name == "alexnet":
            expected = model.classifier[:6](torch.flatten(model.avgpool(model.features(x)), 1))
        else:
            m = model
            h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            expected = m.layer4(m.layer3(m.layer2(m.layer1(h)))).mean((2, 3))
    np.testing.assert_allclose(cf.codes[layer], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert (cf.codes[layer] >= 0).all()


def test_codes_file_follows_the_contract_with_plain_h5py(split_tree, tmp_path):
    out = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(split_tree), "-o", str(out), *FAST, "--workers", "0"]) == 0
    with h5py.File(out, "r") as h5:
        assert set(h5.keys()) >= {"codes", "labels", "paths", "split", "ok", "errors"}
        assert h5["codes/penultimate"].dtype == np.float32 and h5["codes/penultimate"].shape == (20, 1280)
        assert h5["codes/penultimate"].chunks is not None
        paths = list(h5["paths"].asstr()[()])
        splits = list(h5["split"].asstr()[()])
        labels = h5["labels"][()]
        attrs = dict(h5.attrs)
    assert paths[0] == "test/cat/img_000.png" and set(splits) == {"train", "test"}
    assert json.loads(attrs["class_names"]) == ["cat", "dog"]
    assert [labels[i] for i, p in enumerate(paths) if "/dog/" in p] == [1] * 10
    taps = json.loads(attrs["taps"])
    assert taps[0]["node"] == "features.18" and taps[0]["pool"] == "avg" and taps[0]["dim"] == 1280
    assert json.loads(attrs["weights"])["source"] == "random"
    assert json.loads(attrs["preprocess"])["crop"] == 64
    assert attrs["backbone"] == "mobilenet_v2" and bool(attrs["complete"])
    assert "torch" in json.loads(attrs["versions"])


def test_csv_manifest_with_labels_and_splits(image_tree, tmp_path):
    manifest = image_tree / "list.csv"
    manifest.write_text("path,label,split\ncat/img_000.png,cat,train\ndog/img_001.png,dog,test\n"
                        "cat/img_002.png,,\n")
    out = tmp_path / "m.h5"
    assert pipeline.main(["extract", str(manifest), "-o", str(out), *FAST, "--workers", "0"]) == 0
    cf = open_codes(out)
    assert list(cf.rows.paths) == ["cat/img_000.png", "cat/img_002.png", "dog/img_001.png"]
    assert list(cf.rows.labels) == [0, -1, 1] and list(cf.rows.split) == ["train", "", "test"]


def test_max_pool_and_unpooled_guard(image_tree, tmp_path, capsys):
    out = tmp_path / "max.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--pool", "max",
                          "--layer", "block2", "--workers", "0"]) == 0
    assert open_codes(out).codes["block2"].shape == (12, 144)
    code = pipeline.main(["extract", str(image_tree), "-o", str(tmp_path / "none.h5"), *FAST, "--pool", "none",
                          "--layer", "block2", "--max-dim", "1000"])
    assert code == 2
    err = capsys.readouterr().err
    assert "144x16x16" in err and "36,864 floats" in err and "--max-dim" in err
    assert pipeline.main(["extract", str(image_tree), "-o", str(tmp_path / "none.h5"), *FAST, "--pool", "none",
                          "--layer", "block6", "--workers", "0"]) == 0
    assert open_codes(tmp_path / "none.h5").codes["block6"].shape == (12, 960 * 2 * 2)


def test_unknown_layer_and_backbone_are_clear_errors(image_tree, tmp_path, capsys):
    assert pipeline.main(["extract", str(image_tree), "-o", str(tmp_path / "x.h5"), *FAST, "--layer", "fc7"]) == 2
    assert "mobilenet_v2 has no layer 'fc7'" in capsys.readouterr().err
    assert pipeline.main(["extract", str(image_tree), "-o", str(tmp_path / "x.h5"), *FAST, "--backbone", "lenet"]) == 2
    assert "unknown backbone 'lenet'" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_layers_command_lists_aliases_and_shapes(capsys):
    assert pipeline.main(["layers", "alexnet", "--crop", "224"]) == 0
    out = capsys.readouterr().out
    fc7 = next(line for line in out.splitlines() if line.startswith("classifier.5 "))
    assert "4096" in fc7 and "fc7" in fc7 and "penultimate" in fc7 and "yes" in fc7
    assert pipeline.main(["layers", "mobilenet_v2", "--all"]) == 0
    out = capsys.readouterr().out
    bottleneck = next(line for line in out.splitlines() if line.startswith("features.10.conv.3 "))
    assert " no " in bottleneck  # linear bottleneck output: listed with --all, marked not ReLU'd


def test_info_prints_recipe_counts_and_failures(image_tree, tmp_path, capsys):
    (image_tree / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--workers", "0"]) == 0
    assert pipeline.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "13 images, 12 ok, 1 failed" in text
    assert "tap penultimate: node features.18, pool avg, 1280-D" in text
    assert "dog/broken.jpg" in text
    cat_line = next(line for line in text.splitlines() if line.strip().startswith("cat "))
    assert cat_line.split()[-1] == "6"


def test_rerun_is_a_no_op_and_python_api_matches(image_tree, tmp_path):
    out = tmp_path / "codes.h5"
    first = extract_codes(image_tree, out, weights="random", resize=72, crop=64, workers=0, progress=False)
    assert first.n_extracted == 12 and not first.failures
    again = extract_codes(image_tree, out, weights="random", resize=72, crop=64, workers=0, progress=False)
    assert again.up_to_date and again.n_extracted == 0


def test_what_a_run_held_is_freed_on_a_thread_of_its_own_before_it_returns(image_tree, tmp_path, monkeypatch):
    """Freeing the compiled network and the decoders with their shared slots runs on a thread of its own, beside
    the assembly, and is done when extract_codes returns."""
    from cnncodes.extract import runner

    freed = []

    def tracked(make):
        def making(*args, **kwargs):
            made = make(*args, **kwargs)
            kind = type(made).__name__
            weakref.finalize(made, lambda: freed.append((kind, threading.current_thread().name)))
            return made
        return making

    monkeypatch.setattr(runner, "make_computer", tracked(runner.make_computer))
    monkeypatch.setattr(runner, "Decoders", tracked(runner.Decoders))
    result = extract_codes(image_tree, tmp_path / "codes.h5", weights="random", resize=72, crop=64, workers=2,
                           progress=False)
    assert result.n_extracted == 12 and open_codes(tmp_path / "codes.h5").rows.ok.all()
    assert len(freed) == 2 and "Decoders" in dict(freed), freed
    assert {thread for _, thread in freed} == {"cnncodes-release"}
    assert "cnncodes-release" not in {t.name for t in threading.enumerate()}


def test_a_fresh_job_stats_its_files_once_its_decoders_have_started(image_tree, tmp_path, monkeypatch):
    """The decoders need only the paths, so the files' sizes and times are taken after they start (beside them),
    and the codes file records them as the listing alone would."""
    from cnncodes.extract import runner
    from cnncodes.extract.reader import list_images

    order = []

    def noted(name, call):
        def calling(*args, **kwargs):
            order.append(name)
            return call(*args, **kwargs)
        return calling

    monkeypatch.setattr(runner, "Decoders", noted("decoders", runner.Decoders))
    monkeypatch.setattr(runner, "stat_files", noted("stat", runner.stat_files))
    extract_codes(image_tree, tmp_path / "codes.h5", weights="random", resize=72, crop=64, workers=2, progress=False)
    assert order[:2] == ["decoders", "stat"], order
    rows, listed = open_codes(tmp_path / "codes.h5").rows, list_images(image_tree)
    np.testing.assert_array_equal(rows.file_size, listed.file_size)
    np.testing.assert_array_equal(rows.file_mtime_ns, listed.file_mtime_ns)

def test_a_single_process_writes_each_part_into_the_file_as_it_computes_it(image_tree, tmp_path, monkeypatch):
    """A run that assembles its own job adds each part to the codes file under its temporary name as the part is
    computed, and flushes it to disk on a thread of its own: after the last batch nothing is read back (neither the
    parts nor the job's rows), the last part is written to the codes file only, and the file is the one a resumed
    run assembles from part files."""
    from cnncodes.extract import ExtractionInterrupted, parts, writer

    out, added, flushed, written = tmp_path / "codes.h5", [], [], []
    add, flush, write_part = writer.Assembly.add, writer._flush_to_disk, parts.write_part

    def adding(assembly, part, *args):
        added.append((part, assembly.tmp.exists(), out.exists()))
        return add(assembly, part, *args)

    def refused(*args, **kwargs):
        raise AssertionError("read back after the last batch")

    monkeypatch.setattr(writer.Assembly, "add", adding)
    monkeypatch.setattr(writer, "_flush_to_disk", lambda path: flushed.append(threading.current_thread().name)
                        or flush(path))
    for name in ("read_part_codes", "read_part_rows", "read_job_rows"):
        monkeypatch.setattr(parts, name, refused)
    monkeypatch.setattr(parts, "write_part", lambda path, *args: written.append(int(path.stem.split("-")[1]))
                        or write_part(path, *args))
    kwargs = dict(weights="random", resize=72, crop=64, workers=0, part_size=4, progress=False)
    extract_codes(image_tree, out, **kwargs)
    assert added == [(p, True, False) for p in range(3)] and set(flushed) == {"cnncodes-writeback"}, (added, flushed)
    assert written == [0, 1], written
    assert not list(tmp_path.glob(".codes.h5.*.tmp")) and not parts.parts_dir_for(out).exists()
    monkeypatch.undo()

    def interrupted_after_two_parts(assembly, part, *args):  # the parts are kept, the temporary file is not
        if part == 2:
            raise KeyboardInterrupt
        return add(assembly, part, *args)

    monkeypatch.setattr(writer.Assembly, "add", interrupted_after_two_parts)
    resumed = tmp_path / "resumed.h5"
    with pytest.raises(ExtractionInterrupted):
        extract_codes(image_tree, resumed, **kwargs)
    # the parts before the last are kept; the last one went to the codes file only
    assert not list(tmp_path.glob(".resumed.h5.*.tmp")) and parts.finished_parts(parts.parts_dir_for(resumed)) == {0, 1}
    monkeypatch.undo()
    assert extract_codes(image_tree, resumed, **kwargs).resumed_parts == 2  # two from their files, one computed
    with h5py.File(out, "r") as a, h5py.File(resumed, "r") as b:
        np.testing.assert_array_equal(a["codes/penultimate"][()], b["codes/penultimate"][()])
        assert list(a["paths"].asstr()[()]) == list(b["paths"].asstr()[()]) and a.attrs["complete"]


def test_dataset_command_writes_the_digits_tree(tmp_path, capsys):
    from PIL import Image

    from cnncodes.extract.datasets import write_digits

    assert write_digits(tmp_path / "small", per_class=4, test_fraction=0.25) == {"train": 30, "test": 10}
    files = sorted((tmp_path / "small").glob("*/*/*.png"))
    assert len(files) == 40 and {f.parent.name for f in files} == {str(d) for d in range(10)}
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "L"
    assert pipeline.main(["dataset", "digits", str(tmp_path / "all")]) == 0
    assert "wrote 1797 images" in capsys.readouterr().out
    assert len(list((tmp_path / "all").glob("test/*/*.png"))) == 540


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_folding_batchnorm_keeps_the_outputs(name):
    import copy

    from cnncodes.extract.fusion import fold_batchnorm

    model = random_model(name)
    fused = copy.deepcopy(model)
    assert fold_batchnorm(fused) > 10
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_batchnorm_node_can_still_be_tapped(image_tree, tmp_path):
    out = tmp_path / "bn.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--layer", "features.2.conv.3",
                          "--workers", "0"]) == 0
    model = random_model("mobilenet_v2")
    x = batch_of(image_tree, open_codes(out).rows.paths)
    with torch.inference_mode():
        expected = torch.relu(model.features[2].conv(model.features[:2](x))).mean((2, 3))
    np.testing.assert_allclose(open_codes(out).codes["features.2.conv.3"], expected.numpy(), rtol=1e-4, atol=1e-5)


def _eager_penultimate(images: torch.Tensor) -> torch.Tensor:
    x = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        return torch.relu(random_model("mobilenet_v2").features(x)).mean((2, 3))


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def test_cpu_inference_runs_on_openvino_and_matches_eager():
    from cnncodes.extract.runner import inference_setup

    computer, batch_size, description = inference_setup(layers=("block4", "penultimate"), weights="random",
                                                        device="cpu", precision="fp32")
    assert computer.runtime == "openvino" and "fp32 openvino" in description and batch_size == 4
    # fp32 decodes 4 images together and runs them 2 at a time (inference.CPU_FORWARD_BATCH): full passes, then a
    # short one padded to 2
    assert computer.batch_size == 2 and description.endswith("batch 4 in passes of 2")
    images = torch.randint(0, 256, (5, 3, 224, 224), dtype=torch.uint8)
    got = computer(images)
    assert set(got) == {"block4", "penultimate"} and got["block4"].shape == (5, 384)
    with pytest.raises(ValueError, match="a batch of 3 images for a model compiled for 2"):
        computer._start(computer.compiled.create_infer_request(), images[:3].numpy())
    torch.testing.assert_close(got["penultimate"], _eager_penultimate(images), rtol=1e-4, atol=1e-4)


def test_mapped_batches_give_each_batch_its_own_codes_while_the_requests_are_reused():
    """``map`` runs many more forward passes than it has inference requests, full and short (padded) ones, a decoded
    batch larger than a pass as several in turn: each pass's codes, taken before the next is asked for, are its
    own images' (and ok flags and errors), bit for bit those of a single call."""
    from cnncodes.extract.runner import inference_setup

    computer, batch_size, _ = inference_setup(layers=("penultimate",), weights="random", device="cpu", precision="fp32")
    rng = np.random.default_rng(0)
    sizes, forward = [4, 3, 4, 1, 4, 4, 2, 4, 4, 3, 4, 4], 2
    assert batch_size == 4 and computer.batch_size == forward and len(sizes) > 2 * computer.streams
    batches = [(rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8), rng.random(n) > 0.3,
                [f"error {k}.{i}" for i in range(n)]) for k, n in enumerate(sizes)]
    mapped = [(codes["penultimate"].copy(), ok, errors) for codes, ok, errors in computer.map(iter(batches))]
    passes = [(k, i) for k, n in enumerate(sizes) for i in range(0, n, forward)]
    assert [len(errors) for _, _, errors in mapped] == [min(forward, sizes[k] - i) for k, i in passes]
    for (k, i), (codes, ok, errors) in zip(passes, mapped):
        images, want_ok, want_errors = batches[k]
        assert errors == want_errors[i:i + forward] and ok.tolist() == want_ok[i:i + forward].tolist()
        np.testing.assert_array_equal(codes, computer(images[i:i + forward])["penultimate"].numpy())


@pytest.mark.parametrize("device_type, precision, capabilities, asked, forward", [
    ("cpu", "fp32", "BF16,FP32", None, 2), ("cpu", "bf16", "BF16,FP32", None, 4), ("cpu", "auto", "FP32,INT8", None, 2),
    ("cpu", "auto", "BF16,FP32", None, 4), ("cpu", "fp32", "FP32", 3, 3), ("cpu", "fp32", "FP32", 1, 1),
    ("cuda", "bf16", "FP32", None, 64)])
def test_decoded_batches_run_in_forward_passes_of_the_size_the_precision_runs_fastest_in(
        monkeypatch, device_type, precision, capabilities, asked, forward):
    """On the CPU, fp32 (``auto`` where the CPU reports no native bf16) runs the 4 images decoded together 2 at a
    time, bf16 all 4 (bench/RESULTS.md); a batch size asked for is both; a GPU runs the whole batch."""
    from cnncodes.extract import device, runner

    monkeypatch.setenv(device.CAPABILITIES_ENV, capabilities)
    monkeypatch.setattr(runner, "choose_device", lambda *_: device.Device(device_type))
    settings = runner.Settings.of(runner.RunOptions(precision=precision, batch_size=asked, progress=False))
    assert (settings.batch_size, settings.forward_batch) == (asked or (4 if device_type == "cpu" else 64), forward)


@pytest.mark.parametrize("capabilities, runtime", [("BF16,FP32,INT8", "openvino"), ("FP32,INT8", "eager")])
def test_cpu_bf16_runs_on_openvino_only_where_the_cpu_reports_native_bf16(monkeypatch, capabilities, runtime):
    """Each CPU's path is forced through what the CPU reports, so both run (and pass) on any CPU: OpenVINO
    where bf16 is native, eager bf16 autocast elsewhere (OpenVINO would silently compute fp32 there)."""
    from cnncodes.extract import device
    from cnncodes.extract.runner import inference_setup

    monkeypatch.setenv(device.CAPABILITIES_ENV, capabilities)
    computer, _, description = inference_setup(weights="random", device="cpu", precision="bf16")
    assert computer.runtime == runtime and computer.precision == "bf16" and f"bf16 {runtime}" in description
    images = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8)
    assert _cosines(computer(images)["penultimate"], _eager_penultimate(images)).min() > 0.99


def test_cpu_capabilities_report_what_openvino_says_unless_forced(monkeypatch):
    from cnncodes.extract import device, openvino_model

    monkeypatch.delenv(device.CAPABILITIES_ENV, raising=False)
    assert device.cpu_capabilities() == list(openvino_model.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    monkeypatch.setenv(device.CAPABILITIES_ENV, " fp32, int8 ")
    assert device.cpu_capabilities() == ["FP32", "INT8"] and not device.native_bf16()
    monkeypatch.setenv(device.CAPABILITIES_ENV, "BF16,FP32")
    assert device.native_bf16()


@pytest.mark.parametrize("capabilities, expected", [(["FP32", "BF16", "INT8"], "bf16"), (["FP32", "INT8"], "fp32")])
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_reports_native_bf16(monkeypatch, tmp_path,
                                                                                  image_tree, capabilities, expected):
    from cnncodes.extract import device

    cpu = torch.device("cpu")
    assert device.pick_precision("auto", cpu, lambda: capabilities) == expected
    monkeypatch.setenv(device.CAPABILITIES_ENV, ",".join(capabilities))
    out = tmp_path / "auto.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--device", "cpu", "--workers", "0",
                          "--precision", "auto"]) == 0
    cf = open_codes(out)
    assert cf.recipe["precision"] == expected and cf.meta["precision"] == expected


def test_bf16_on_a_cpu_without_native_bf16_runs_eagerly_and_records_bf16(monkeypatch, image_tree, tmp_path, capsys):
    """OpenVINO runs fp32 where the CPU has no native bf16: the codes come from eager bf16 autocast instead,
    so the recipe's bf16 is what made them, and the summary says why it is slow."""
    from cnncodes.extract import device

    monkeypatch.setenv(device.CAPABILITIES_ENV, "FP32,INT8")
    out, fp32 = tmp_path / "bf16.h5", tmp_path / "fp32.h5"
    common = ["extract", str(image_tree), *FAST, "--device", "cpu", "--workers", "0"]
    assert pipeline.main([*common, "-o", str(out), "--precision", "bf16"]) == 0
    printed = capsys.readouterr().out
    assert "cpu bf16 eager" in printed and "no native bf16" in printed and "--precision auto picks fp32" in printed
    assert pipeline.main([*common, "-o", str(fp32), "--precision", "fp32"]) == 0
    assert "fp32 openvino" in capsys.readouterr().out
    a, b = open_codes(out), open_codes(fp32)
    assert a.recipe["precision"] == "bf16" and b.recipe["precision"] == "fp32"
    cosines = _cosines(torch.from_numpy(a.codes["penultimate"]), torch.from_numpy(b.codes["penultimate"]))
    assert cosines.min() > 0.99 and not np.array_equal(a.codes["penultimate"], b.codes["penultimate"])


def test_a_file_never_mixes_precisions(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    common = ["extract", str(image_tree), "-o", str(out), *FAST, "--device", "cpu", "--workers", "0"]
    assert pipeline.main([*common, "--precision", "fp32"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert pipeline.main([*common, "--precision", "bf16"]) == 2
    assert "precision: fp32 in the file, bf16 asked for" in capsys.readouterr().err
    assert pipeline.main([*common, "--precision", "bf16", "--update"]) == 2
    assert out.read_bytes() == before
    assert pipeline.main([*common, "--precision", "fp32"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_network_openvino_cannot_convert_runs_eagerly_with_one_note(monkeypatch, image_tree, tmp_path, capsys):
    from cnncodes.extract import openvino_model

    def fail(*args, **kwargs):
        raise RuntimeError("this graph cannot be converted")

    monkeypatch.setattr(openvino_model, "converted", fail)
    monkeypatch.setattr(openvino_model, "cached", lambda key: None)  # not a network an earlier test converted
    out = tmp_path / "eager.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *FAST, "--device", "cpu", "--workers", "0",
                          "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if "OpenVINO" in line]
    assert len(notes) == 1 and "this graph cannot be converted" in notes[0] and "eager PyTorch" in notes[0]
    assert "cpu fp32 eager" in printed
    model = random_model("mobilenet_v2")
    x = batch_of(image_tree, open_codes(out).rows.paths)
    with torch.inference_mode():
        expected = torch.relu(model.features(x)).mean((2, 3))
    np.testing.assert_allclose(open_codes(out).codes["penultimate"], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_reading_codes_and_info_do_not_load_torch(image_tree, tmp_path):
    codes = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(image_tree), "-o", str(codes), *FAST, "--workers", "0"]) == 0
    script = ("import sys; import cnncodes.classify, cnncodes.extract; from cnncodes import pipeline; "
              "from cnncodes.extract import open_codes; open_codes(sys.argv[1]); assert pipeline.main(['info', sys.argv[1]]) == 0; "
              "assert 'torch' not in sys.modules, 'torch loaded'")
    done = subprocess.run([sys.executable, "-c", script, str(codes)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_a_moved_image_folder_is_refused_naming_only_what_differs(image_tree, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    common = [*FAST, "--device", "cpu", "--workers", "0"]
    assert pipeline.main(["extract", str(image_tree), "-o", str(out), *common]) == 0
    moved = image_tree.rename(tmp_path / "moved")
    capsys.readouterr()
    assert pipeline.main(["extract", str(moved), "-o", str(out), *common]) == 2
    err = capsys.readouterr().err
    assert f"the images are now in {moved}" in err and "classes" not in err  # the same classes: not listed twice


def test_layers_lists_every_alias_of_resnet18(capsys):
    from cnncodes.extract.backbones import get_backbone

    assert pipeline.main(["layers", "resnet18", "--crop", "64"]) == 0
    listed = {a.strip() for line in capsys.readouterr().out.splitlines()[2:]
              for a in line.split("  ")[-1].split(",") if a.strip()}
    assert set(get_backbone("resnet18").aliases) <= listed


@pytest.mark.parametrize("backbone,logits", [("mobilenet_v2", "classifier.1"), ("resnet18", "fc")])
def test_tapping_the_imagenet_logits_is_refused(tmp_path, capsys, backbone, logits):
    images = make_tree(tmp_path / "images", per_class=1)
    assert pipeline.main(["extract", str(images), "-o", str(tmp_path / "c.h5"), "--backbone", backbone,
                          "--layer", logits, *FAST]) == 2
    err = capsys.readouterr().err
    assert "output layer (the ImageNet logits" in err and f"cnncodes layers {backbone}" in err
    assert not (tmp_path / "c.h5").exists()
