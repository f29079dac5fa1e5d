"""The mapper for a run: OpenVINO on the CPU where the network converts (torch-free once converted), eager
PyTorch elsewhere (eager.py). Kept apart from inference.py, which eager.py builds on."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import device as devices
from .codesfile import short
from .inference import OpenVINOComputer, _compiled

if TYPE_CHECKING:
    from .eager import CodeComputer
    from .network import Network

NO_NATIVE_BF16 = ("this CPU has no native bf16, where OpenVINO runs fp32: bf16 runs emulated in eager PyTorch "
                  "(slow; --precision auto picks fp32 here)")


def make_computer(network: Network, preprocess: dict, device, precision: str, batch_size: int,
                  streams: int = 1, views: int = 1) -> CodeComputer | OpenVINOComputer:
    """The fastest computer for ``device``: OpenVINO on the CPU (eager PyTorch when that fails), eager elsewhere.
    A network converted and checked by an earlier run (``network.ir``) needs no eager model, nor torch.
    ``batch_size`` images of ``views`` crops each make one forward pass of ``batch_size * views`` crops."""
    taps, crops = network.taps, batch_size * views
    if device.type == "cpu" and network.ir is not None and not (precision == "bf16" and not devices.native_bf16()):
        try:
            return _compiled(lambda: network.converted, taps, precision, crops, streams, views, network.key,
                             network.ir)
        except Exception:
            pass
    from .eager import CodeComputer, _converted, _eager

    if device.type == "cpu" and precision == "bf16" and not devices.native_bf16():
        return CodeComputer(_eager(network.model, taps, preprocess), device, precision, crops,
                            note=NO_NATIVE_BF16, views=views)
    module = _eager(network.model, taps, preprocess)
    if device.type != "cpu":
        return CodeComputer(module, device, precision, crops, views=views)
    try:
        return _converted(module, network, preprocess, precision, crops, streams, views)
    except Exception as err:  # a network or tap that OpenVINO cannot take
        reason = short(str(err), 200) or type(err).__name__
        return CodeComputer(module, device, precision, crops, views=views,
                            note=f"OpenVINO could not run this network ({reason}); using eager PyTorch (slower)")
