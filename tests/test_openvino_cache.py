"""The converted-model cache: reruns skip the conversion, a damaged entry costs one, concurrent ranks agree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from conftest import ROOT

from cnncodes.extract import openvino_model


class Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.factor


def _output(model, x: torch.Tensor):
    return openvino_model.core().compile_model(model, "CPU")([x.numpy()], share_inputs=False)[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCODES_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_rerun_loads_the_converted_model_and_builds_nothing(cache, monkeypatch, image_tree, tmp_path):
    """The taps are kept beside the converted model: a rerun neither builds the network nor converts it, and
    writes the same codes. OpenVINO's compiled form is kept in the entry too: a rerun that loads it, and one
    that finds it damaged (compiled again), write the same codes to the bit."""
    from cnncodes.extract import extract_codes, network
    from cnncodes.extract.codesfile import open_codes
    from fault_injection import files_equal

    def run(name: str):
        result = extract_codes(image_tree, tmp_path / name, weights="random", resize=72, crop=64, precision="fp32",
                               layers=["block4", "penultimate"], progress=False)
        assert result.runtime.startswith("cpu fp32 openvino") and not result.notes, (result.runtime, result.notes)
        return open_codes(tmp_path / name)

    first = run("first.h5")
    assert len(list(cache.glob("*/model.xml"))) == 1
    blobs = list(cache.glob("*/compiled/*.blob"))
    assert len(blobs) == 1 and blobs[0].stat().st_size > 0

    def never(*args, **kwargs):
        raise AssertionError("built, converted or read again")

    monkeypatch.setattr(network, "build_model", never)
    monkeypatch.setattr(openvino_model, "converted", never)
    monkeypatch.setattr(openvino_model, "_read", never)  # compiled from the fixed-batch IR file: no model read
    (fixed,) = cache.glob("*/model-b*.xml")
    assert fixed.with_suffix(".bin").samefile(fixed.with_name("model.bin"))  # its weights: no second copy
    again = run("again.h5")
    assert again.taps == first.taps == ["block4", "penultimate"]
    assert again.meta["taps"] == first.meta["taps"] and again.recipe == first.recipe
    assert files_equal(first.path, again.path)
    blobs[0].chmod(0o644)
    blobs[0].write_bytes(blobs[0].read_bytes()[:1000])  # cut short
    assert files_equal(first.path, run("damaged.h5").path)
    assert len(list(cache.glob("*/compiled/*.blob"))) == 1 and blobs[0].stat().st_size > 1000  # compiled again


def test_a_compiled_form_that_cannot_be_stored_only_costs_time(cache, monkeypatch, image_tree, tmp_path):
    """Where OpenVINO cannot use the folder for compiled forms (here a file stands in its way), the converted model
    is compiled without it: OpenVINO still runs, with the same codes."""
    from cnncodes.extract import extract_codes
    from fault_injection import files_equal

    def run(name: str):
        result = extract_codes(image_tree, tmp_path / name, weights="random", resize=72, crop=64, precision="fp32",
                               progress=False)
        assert result.runtime.startswith("cpu fp32 openvino") and not result.notes, (result.runtime, result.notes)
        return tmp_path / name

    first = run("first.h5")
    (compiled,) = cache.glob("*/compiled")
    shutil.rmtree(compiled)
    compiled.write_text("in the way", encoding="utf-8")
    assert files_equal(first, run("again.h5"))
    assert compiled.read_text(encoding="utf-8") == "in the way"


def test_a_damaged_entry_is_deleted_and_costs_a_conversion(cache):
    """A damaged meta.json when the entry is looked up, a damaged model where it is first read."""
    entry = cache / "k"
    entry.mkdir(parents=True)
    (entry / "model.xml").write_text("<not a model", encoding="utf-8")
    (entry / "meta.json").write_text("{}", encoding="utf-8")
    xml, meta = openvino_model.cached("k")
    assert meta == {} and openvino_model.read_cached(xml) is None and not entry.exists()
    entry.mkdir(parents=True)
    (entry / "model.xml").write_text("<model/>", encoding="utf-8")
    (entry / "meta.json").write_text("{not json", encoding="utf-8")
    assert openvino_model.cached("k") is None and not entry.exists()


def test_a_rank_that_loses_the_race_to_store_uses_the_stored_model(cache):
    """Two ranks convert the same network at once; the second cannot rename its entry into place and
    must run the stored model, as the first does, so that both write the same codes."""
    x = torch.ones(1, 3)
    winner = openvino_model.converted(Scale(2.0), x, "key", {"taps": ["winner's"]})
    assert (_output(winner, x) == 2).all()
    loser = openvino_model.converted(Scale(3.0), x, "key", {"taps": ["loser's"]})  # the same network, made distinguishable
    assert (_output(loser, x) == 2).all()
    assert openvino_model.cached("key")[1] == {"taps": ["winner's"]}


def test_the_fixed_batch_form_links_its_weights_or_copies_them_where_links_are_refused(cache, monkeypatch):
    """The fixed-batch IR file a warm run compiles shares the entry's weights (a hard link); on a file system
    without links it keeps a copy, and runs the same."""
    x = torch.ones(4, 3)
    model = openvino_model.converted(Scale(2.0), x[:1], "key", {})
    xml, _ = openvino_model.cached("key")
    linked = openvino_model.fixed_batch_ir(xml, 4, lambda: model)
    assert linked.with_suffix(".bin").samefile(xml.with_suffix(".bin"))

    def refused(*args, **kwargs):
        raise OSError("links not supported here")

    monkeypatch.setattr(os, "link", refused)
    copied = openvino_model.fixed_batch_ir(xml, 8, lambda: model)
    assert copied.name == "model-b8.xml" and not copied.with_suffix(".bin").samefile(xml.with_suffix(".bin"))
    assert copied.with_suffix(".bin").read_bytes() == xml.with_suffix(".bin").read_bytes()
    for path, batch in ((linked, 4), (copied, 8)):
        out = openvino_model.core().compile_model(str(path), "CPU")([torch.ones(batch, 3).numpy()])[0]
        assert out.shape == (batch, 3) and (out == 2).all()
    assert sorted(p.name for p in xml.parent.iterdir() if p.name.startswith(".")) == []  # no temporary left


def _outside_ci(tmp_path: Path, code: str) -> str:
    """Run ``code`` in a fresh Python that does not look like CI (where OpenVINO turns its telemetry off), with
    an empty HOME and no model cache; its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(tmp_path / "home"), CNNCODES_CACHE_DIR="off")
    (tmp_path / "home").mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_extraction_outside_ci_loads_no_telemetry(tmp_path, image_tree):
    """Importing OpenVINO posts usage telemetry (a client id under ~/intel, then a thread that forks a sender:
    that fork once hung a run inside h5py). A whole extraction that converts a network loads none of it and
    writes nothing under HOME."""
    out = _outside_ci(tmp_path, "import sys; from cnncodes.extract import extract_codes; "
                      f"r = extract_codes({str(image_tree)!r}, {str(tmp_path / 'c.h5')!r}, weights='random', "
                      "resize=72, crop=64, precision='fp32', progress=False); "
                      "print(r.runtime, sys.modules.get('openvino_telemetry'))")
    assert out.split()[-1] == "None" and "openvino" in out, out
    assert list((tmp_path / "home").iterdir()) == []


def test_openvino_is_imported_without_its_converter_until_a_conversion_asks_for_it():
    """A warm run converts nothing, so ``ov`` leaves OpenVINO's converter out of the import (half of its cost);
    ``openvino.convert_model`` still works, importing it on first use, and an attribute OpenVINO lacks still raises."""
    code = ("import sys; from cnncodes.extract import openvino_model; ov = openvino_model.ov(); "
            "before = 'openvino.tools.ovc' in sys.modules; convert = ov.convert_model; "
            "from openvino.tools.ovc import convert_model; missing = hasattr(ov, 'no_such_thing'); "
            "print(before, convert is convert_model, 'openvino.tools.ovc' in sys.modules, missing)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "False"], out.stdout


def test_converting_sends_no_telemetry_where_openvino_was_imported_first(tmp_path):
    """Where the caller imported OpenVINO (its telemetry live), converting still sends no event."""
    try:  # installed with OpenVINO; cnncodes blocks its import in this process, so ask the package metadata
        metadata.version("openvino-telemetry")
    except metadata.PackageNotFoundError:
        pytest.skip("this OpenVINO has no telemetry package")
    out = _outside_ci(tmp_path, "import openvino, openvino_telemetry, torch; sent = []; "
                      "openvino_telemetry.Telemetry.send_event = lambda self, *a, **k: sent.append(a); "
                      "from cnncodes.extract import openvino_model; "
                      "openvino_model.converted(torch.nn.ReLU(), torch.ones(1, 3), None); print(len(sent))")
    assert out.split()[-1] == "0", out


def test_a_network_for_another_device_is_built_and_never_read_from_the_cache(cache, monkeypatch):
    """The cache holds CPU conversions only: a CUDA run builds its network and resolves its taps itself."""
    from cnncodes.extract import network
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.weights import RANDOM, WeightsInfo

    monkeypatch.setattr(openvino_model, "cached", lambda key: pytest.fail("read the cache"))
    bb = get_backbone("mobilenet_v2")
    prep = {**preprocess_config(bb), "crop": 64}
    net = network.prepare(bb, WeightsInfo(RANDOM, RANDOM, ""), ["block4"], "avg", prep, 65536, torch.device("cuda"))
    assert net.key is None and net.converted is None and [t.name for t in net.taps] == ["block4"]
    assert isinstance(net.model, torch.nn.Module)
