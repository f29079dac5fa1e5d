"""The converted-model cache: reruns skip the conversion, a damaged entry costs one, concurrent ranks agree."""
from __future__ import annotations

import pytest
import torch

from extract import openvino_model


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


def test_a_rerun_loads_the_converted_model_and_converts_nothing(cache, monkeypatch):
    from extract.runner import inference_setup

    first, _, _ = inference_setup(weights="random", device="cpu", precision="fp32")
    assert first.runtime == "openvino" and len(list(cache.glob("*/model.xml"))) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino_model, "converted", no_conversion)
    again, _, _ = inference_setup(weights="random", device="cpu", precision="fp32")
    assert again.runtime == "openvino" and not again.note


def test_a_damaged_entry_is_deleted_and_costs_a_conversion(cache):
    entry = cache / "k"
    entry.mkdir(parents=True)
    (entry / "model.xml").write_text("<not a model", encoding="utf-8")
    assert openvino_model.cached("k") is None and not entry.exists()


def test_a_rank_that_loses_the_race_to_store_uses_the_stored_model(cache):
    """Two ranks convert the same network at once; the second cannot rename its entry into place and
    must run the stored model, as the first does, so that both write the same codes."""
    x = torch.ones(1, 3)
    winner = openvino_model.converted(Scale(2.0), x, "key")
    assert (_output(winner, x) == 2).all()
    loser = openvino_model.converted(Scale(3.0), x, "key")  # stands for the same network, made distinguishable
    assert (_output(loser, x) == 2).all()


def test_converting_sends_no_telemetry(monkeypatch):
    """OpenVINO's converter posts usage telemetry by default, from a thread that forks; offline means none."""
    openvino_telemetry = pytest.importorskip("openvino_telemetry", reason="this OpenVINO has no telemetry package")
    sent = []
    monkeypatch.setattr(openvino_telemetry.Telemetry, "send_event", lambda self, *a, **k: sent.append(a))
    model = openvino_model.converted(Scale(2.0), torch.ones(1, 3), None)
    assert (_output(model, torch.ones(1, 3)) == 2).all()
    assert sent == []
