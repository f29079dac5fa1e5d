"""Traced forward passes kept between runs, so that a rerun skips building and tracing the network.

Preparing MobileNetV2 for the CPU takes about a second, and half of it (building the model,
loading its weights, resolving the taps, folding BatchNorm, tracing) gives the same result every
time for the same network, weights, taps and batch shape. That result, the uncompiled trace with
its taps, is kept here after the first run; later runs load it (0.02 s) and only compile it for
the machine. An entry must reproduce the eager outputs stored with it or it is not used.

Traces of big networks are not kept (over ``MAX_ENTRY_BYTES`` of weights: VGG16's 528 MB, AlexNet's
fc layers): they would fill the cache, and their start-up is small next to their forward passes.

The key covers everything the trace depends on: the backbone and its weights' SHA-256, the layers
and pooling asked for, crop and batch size, the torch and torchvision versions and the source
of the modules that build the trace. ``CNNCODES_CACHE_DIR`` moves the cache (``off`` turns it
off); the default is ``$XDG_CACHE_HOME/cnncodes/traces`` or ``~/.cache/cnncodes/traces``. The
oldest entries are deleted beyond ``MAX_BYTES``. A cache that cannot be read or written is
skipped: it only ever costs the time it was meant to save.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from . import backbones, fusion, inference, taps
from .inference import Trace
from .taps import Tap

ENV = "CNNCODES_CACHE_DIR"
MAX_BYTES = 1 << 30
MAX_ENTRY_BYTES = 128 << 20  # ResNet-50 (90 MiB up to its penultimate layer) fits, VGG16 does not
FORMAT = 1
_SOURCES = (backbones, fusion, inference, taps)  # what a trace is made by


@dataclass
class CachedTrace:
    """A cache entry: the trace and the taps it computes."""

    trace: Trace
    taps: list[Tap]


def cache_dir() -> Path | None:
    """The cache folder, or None when ``CNNCODES_CACHE_DIR`` is ``off`` (or empty) or there is no home folder."""
    value = os.environ.get(ENV)
    try:
        if value is not None:
            return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home folder to expand ~ or find ~/.cache in
        return None
    return Path(base) / "cnncodes" / "traces"


def trace_key(**identity) -> str | None:
    """A file-name-safe digest of ``identity`` (JSON-able), the library versions and the trace-building code;
    None when that code cannot be read (an unusual installation): no caching then."""
    try:
        code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in _SOURCES)).hexdigest()
    except (OSError, TypeError):
        return None
    payload = {"format": FORMAT, "torch": torch.__version__, "torchvision": torchvision.__version__, "code": code,
               **identity}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:40]


def load(key: str) -> CachedTrace | None:
    """The entry for ``key``, or None when there is none or it cannot be read."""
    path = _path(key)
    if path is None:
        return None
    extra = {"taps.json": "", "check.pt": ""}
    try:
        if not path.is_file():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; see inference.py
            function = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        check = torch.load(io.BytesIO(extra["check.pt"]), map_location="cpu", weights_only=True)
        found = [Tap(**{**t, "shape": tuple(t["shape"])}) for t in json.loads(extra["taps.json"])]
        size = path.stat().st_size
        os.utime(path)  # recently used: pruned last
    except Exception:  # truncated, from another version, unreadable, pruned by another run: rebuilt and rewritten
        return None
    return CachedTrace(Trace(function, check["probe"], check["expected"], size), found)


def store(key: str, entry: CachedTrace) -> None:
    """Write ``entry`` atomically under ``key`` and prune the cache; silently does nothing if it cannot."""
    path = _path(key)
    if path is None or entry.trace.weight_bytes > MAX_ENTRY_BYTES:
        return
    tap_list = [{k: v for k, v in t.as_dict().items() if k != "relu"} for t in entry.taps]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        check = io.BytesIO()
        torch.save({"probe": entry.trace.probe, "expected": entry.trace.expected}, check)
        # Serialized in memory first: TorchScript's file writer aborts the process when the disk is full.
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(entry.trace.function, buffer,
                           _extra_files={"taps.json": json.dumps(tap_list), "check.pt": check.getvalue()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        _prune(path.parent)
    except Exception:  # read-only home, full disk, a function TorchScript cannot save: run without
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{key}.pt"


def _prune(folder: Path) -> None:
    """Delete the least recently used entries while the cache holds more than ``MAX_BYTES``, and
    temporary files that a killed run left (older than an hour: a live writer needs well under a second)."""
    for tmp in folder.glob(".*.tmp"):
        if time.time() - tmp.stat().st_mtime > 3600:
            tmp.unlink(missing_ok=True)
    entries = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for newest_first, entry in enumerate(entries):
        total += entry.stat().st_size
        if total > MAX_BYTES and newest_first:  # the newest stays, whatever its size
            entry.unlink(missing_ok=True)
