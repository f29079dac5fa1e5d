"""Convert a tap model to OpenVINO through ``torch.export``, and keep the converted model between runs.

Conversion takes seconds (export, then ``openvino.convert_model``) and gives the same model every
time for the same network, weights, taps and input size, so its IR files (``ov.save_model``) are
kept in a cache folder: ``$CNNCODES_CACHE_DIR`` (``off``: no cache), else
``$XDG_CACHE_HOME/cnncodes/openvino`` or ``~/.cache/cnncodes/openvino``; the oldest entries go
beyond ``MAX_ENTRIES``. Beside the IR files an entry keeps the caller's ``meta.json`` (network.py: the
taps, so that a rerun builds nothing), the model with its batch size fixed for each batch size run
(``fixed_batch_ir``: an xml of its own, the weights linked) and OpenVINO's compiled forms (``compiled_dir``).
The caller checks every conversion against the eager model before it is used; the key covers everything an
entry depends on, so a later run trusts it, and a damaged entry costs a conversion.
"""
from __future__ import annotations

import filecmp
import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_ENTRIES = 8
_SOURCES = ("backbones.py", "efficientnet_lite.py", "lite_scaling.py", "taps.py", "network.py", "inference.py",
            "eager.py", "fusion.py", "openvino_model.py")


def available() -> bool:
    """Whether OpenVINO is installed (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def ov():
    """The ``openvino`` module, imported without its usage telemetry and, until a conversion asks for it, without
    its converter. On import OpenVINO posts an event (Google Analytics, writing a client id under ~/intel) from a
    thread that forks a process to send it: that fork, taken while the main thread held h5py's lock, hung
    extractions for good (h5py's and logging's at-fork locks), and cnncodes stays offline. With
    ``openvino_telemetry`` blocked, OpenVINO's tools use their own stand-in (``telemetry_stub``). The converter
    (``openvino.tools.ovc``) is half of the import and a warm run converts nothing: ``openvino.convert_model``
    imports it on first use. A process that imported OpenVINO earlier keeps what it has."""
    sys.modules.setdefault("openvino_telemetry", None)
    if "openvino" not in sys.modules:
        sys.modules[_CONVERTER] = None  # openvino/__init__ skips what raises ImportError
        try:
            import openvino
        finally:
            if sys.modules.get(_CONVERTER, "") is None:
                del sys.modules[_CONVERTER]
        if not hasattr(openvino, "convert_model"):
            openvino.__getattr__ = _converter_on_use
    import openvino

    return openvino


_CONVERTER = "openvino.tools.ovc"


def _converter_on_use(name: str):
    """``openvino``'s module ``__getattr__`` (PEP 562) where ``ov`` left the converter out."""
    if name == "convert_model":
        from openvino.tools.ovc import convert_model

        return convert_model
    raise AttributeError(f"module 'openvino' has no attribute {name!r}")


@functools.cache
def core():
    """The process's one ``openvino.Core``. With a Core made for each compile, a process that compiled many
    models (the test suite; an API user extracting many times) crashed, as upstream reports for a second Core."""
    return ov().Core()


def cache_dir() -> Path | None:
    setting = os.environ.get("CNNCODES_CACHE_DIR", "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnncodes" / "openvino"


def compiled_dir(key: str | None) -> Path | None:
    """Where OpenVINO keeps the compiled forms of the entry ``key`` (its ``CACHE_DIR``: one blob per batch size,
    precision and streams), inside the entry, so they go with it. Loading a blob skips most of compiling at each
    run's start (bench/RESULTS.md); a damaged one OpenVINO compiles again and replaces."""
    folder = cache_dir()
    return folder / key / "compiled" if folder and key else None


def cache_key(description: dict) -> str:
    """A digest of what the converted model depends on: ``description`` (network, weights, taps,
    input size, normalization) and the versions of torch, torchvision, openvino and of this code, read
    without importing them (versions.py): a warm run finds its entry without importing torch."""
    from .versions import installed_version

    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in _SOURCES)).hexdigest()
    versions = [*(installed_version(name) for name in ("torch", "torchvision", "openvino")), code]
    return hashlib.sha256(json.dumps([description, versions], sort_keys=True).encode()).hexdigest()[:32]


def cached(key: str | None) -> tuple[Path, dict] | None:
    """(the IR file of the converted model, its meta) stored under ``key``, or None (no cache, no entry, or a
    damaged one, then deleted). The model itself is read only where needed (``read_cached``): a run that compiles
    a fixed-batch form (``fixed_batch_ir``) already made never reads it."""
    xml = ir_file(key)
    if xml is None:
        return None
    try:
        meta = json.loads((xml.parent / "meta.json").read_text(encoding="utf-8"))
    except Exception:
        shutil.rmtree(xml.parent, ignore_errors=True)
        return None
    os.utime(xml.parent)
    return xml, meta


def ir_file(key: str | None) -> Path | None:
    """The IR file of the converted model stored under ``key``; None where there is none."""
    folder = cache_dir()
    xml = folder / key / "model.xml" if folder and key else None
    return xml if xml is not None and xml.is_file() else None


def read_cached(xml: Path):
    """The converted model of a cache entry (``cached``); None where it cannot be read (the entry deleted)."""
    try:
        return _read(xml)
    except Exception:
        shutil.rmtree(xml.parent, ignore_errors=True)
        return None


def fixed_batch_ir(xml: Path, batch: int, read_model: Callable[[], object]) -> Path | None:
    """The entry's model (``xml``; ``read_model()`` reads it) with its batch fixed to ``batch``, as IR files beside it,
    written on first use: OpenVINO compiles such a file, and finds its compiled form, without reading the model
    or hashing its weights (bench/RESULTS.md). Its weights are a link to the entry's where the reshape left them
    as they were. None where it cannot be written (then the model is compiled as an object)."""
    fixed = xml.with_name(f"{xml.stem}-b{batch}.xml")
    if fixed.is_file():
        return fixed
    tmp = xml.with_name(f".{fixed.stem}.{os.getpid()}.tmp")
    try:
        reshaped = with_batch(read_model(), batch)
        tmp.mkdir(exist_ok=True)
        ov().save_model(reshaped, tmp / fixed.name, compress_to_fp16=False)
        weights = (tmp / fixed.name).with_suffix(".bin")
        if filecmp.cmp(weights, xml.with_suffix(".bin"), shallow=False):
            try:
                os.link(xml.with_suffix(".bin"), tmp / "linked.bin")
                os.replace(tmp / "linked.bin", weights)
            except OSError:
                pass  # a file system without hard links: a copy of its own
        os.replace(weights, fixed.with_suffix(".bin"))
        os.replace(tmp / fixed.name, fixed)  # last: an xml names a whole model
        return fixed
    except Exception:
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def with_batch(model, batch: int):
    """A copy of ``model`` (an ``openvino.Model``) with its batch size fixed to ``batch``: compiled for one batch
    size, it runs faster than with a free one (bench/RESULTS.md)."""
    fixed = model.clone()
    shape = fixed.inputs[0].get_partial_shape()
    shape[0] = batch
    fixed.reshape({fixed.inputs[0]: shape})
    return fixed


def converted(module: torch.nn.Module, example: torch.Tensor, key: str | None, meta: dict | None = None):
    """``module`` exported and converted to an ``openvino.Model`` with a free batch size, then stored
    with ``meta`` under ``key`` and read back from there: the model later runs load, so their codes are
    the same to the bit. Raises when the network cannot be exported or converted."""
    import torch

    openvino = ov()
    with torch.no_grad():
        program = torch.export.export(module, (example,))
    with no_telemetry():
        from openvino.tools.ovc import convert_model

        model = convert_model(program)
    model.reshape({model.inputs[0]: openvino.PartialShape([-1, *example.shape[1:]])})
    folder = cache_dir()
    if folder and key and (_store(model, meta or {}, folder / key) or (folder / key / "model.xml").is_file()):
        return _read(folder / key / "model.xml")  # ours, or a concurrent rank's identical one
    return model


@contextmanager
def no_telemetry():
    """``convert_model`` sends usage telemetry as the import does (see ``ov``), also where OpenVINO was imported
    before cnncodes could block it: the converter's own stand-in replaces it while converting."""
    ov()
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils
    except ImportError:  # another converter layout: nothing to replace
        yield
        return
    saved = convert_impl.tm, telemetry_utils.tm
    convert_impl.tm = telemetry_utils.tm = telemetry_stub
    try:
        yield
    finally:
        convert_impl.tm, telemetry_utils.tm = saved


def _read(xml: Path):
    """The IR files at ``xml``, read by OpenVINO's IR frontend alone: ``Core.read_model`` tries every frontend
    on a file the IR one refuses, and the TensorFlow one, with its own protobuf, left the heap corrupted."""
    ov()
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("ir")
    return frontend.convert(frontend.load(str(xml)))


def forget(key: str | None) -> None:
    """Delete the entry of ``key`` (a conversion that did not pass its check)."""
    folder = cache_dir()
    if folder and key:
        shutil.rmtree(folder / key, ignore_errors=True)


def _store(model, meta: dict, entry: Path) -> bool:
    """Save the IR files into a temporary folder, then rename it into place; False when the cache cannot be written."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        ov().save_model(model, tmp / "model.xml", compress_to_fp16=False)
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, entry)
        _prune(entry.parent)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(folder: Path) -> None:
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[MAX_ENTRIES:]:
        shutil.rmtree(old, ignore_errors=True)
