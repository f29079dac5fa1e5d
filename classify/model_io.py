"""model.joblib with a SHA-256 sidecar that is checked before anything is unpickled.

Unpickling runs code, so ``load_model`` only opens the path the user names and refuses a file
whose bytes do not match ``model.joblib.sha256`` written next to it at training time. Here too: what a path
holds, told by its files (a codes file, a fine-tuned run), for runs.py's choice and both predicts.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import joblib

from cnncodes.extract.errors import UsageError
from cnncodes.extract.names import CODES_MODEL, FINETUNED_MODEL

MODEL_NAME = CODES_MODEL
SIDECAR_SUFFIX = ".sha256"
CODES_SUFFIXES = (".h5", ".hdf5")
LEGACY_MODULES = ("classify.models", "classify.linear_svm")  # where 0.1 models found their pickled classes


def model_files(bundle: dict) -> dict[str, bytes | str]:
    """The model bytes and its sidecar (``<hex>  model.joblib``), for fileio.write_files."""
    buf = io.BytesIO()
    joblib.dump(bundle, buf)
    data = buf.getvalue()
    return {MODEL_NAME: data, MODEL_NAME + SIDECAR_SUFFIX: f"{hashlib.sha256(data).hexdigest()}  {MODEL_NAME}\n"}


def model_path(path_or_run_dir: str | os.PathLike) -> Path:
    """A run directory means its model.joblib; a file path is taken as is."""
    path = Path(path_or_run_dir)
    return path / MODEL_NAME if path.is_dir() else path


def load_model(path_or_run_dir: str | os.PathLike) -> dict:
    """Verify the SHA-256 sidecar, then unpickle the model bundle (ValueError if anything is off)."""
    path = model_path(path_or_run_dir)
    if _is_hdf5(path):
        raise UsageError(f"{path} is a codes file, not a model: the first argument is the run folder written by "
                         "`cnncodes classify` (RUN_DIR), then the images or codes to predict")
    if not path.is_file():
        runs = find_runs(path.parent) if path.name == MODEL_NAME and path.parent.is_dir() else []
        if runs:
            listed = ", ".join(str(r) for r in runs[:12]) + (f" and {len(runs) - 12} more" if len(runs) > 12 else "")
            raise UsageError(f"{path.parent} holds no model itself but its subfolders do; pick one: {listed}")
        raise UsageError(f"{path}: no such model file")
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        raise UsageError(f"{path} has no checksum file {sidecar.name}; refusing to unpickle a model whose "
                         "origin cannot be checked")
    fields = sidecar.read_text(encoding="utf-8").split()
    expected = fields[0].lower() if fields else ""
    data = path.read_bytes()  # hash and unpickle the very same bytes
    actual = hashlib.sha256(data).hexdigest()
    if expected != actual:
        raise UsageError(f"{path} does not match its checksum in {sidecar.name} (expected {expected[:16] or 'nothing'}..., "
                         f"file is {actual[:16]}...); it was changed after training, refusing to load it")
    bundle = _unpickle(data)
    if not isinstance(bundle, dict) or "pipeline" not in bundle:
        raise UsageError(f"{path} is not a cnncodes model")
    return bundle


def _unpickle(data: bytes):
    """joblib.load of ``data``. Models saved before cnncodes was installed as one package (0.1) name their
    classes by the old top-level modules (``classify.models.PowerNormalizer``): those names are lent to
    the unpickler, pointing at the same module objects, during the load."""
    import sys
    from importlib import import_module

    lent = {old: import_module(f"cnncodes.{old}") for name in LEGACY_MODULES
            for old in (name.split(".")[0], name) if old not in sys.modules}
    sys.modules.update(lent)
    try:
        return joblib.load(io.BytesIO(data))
    finally:
        for old in lent:
            sys.modules.pop(old, None)


def find_runs(folder: str | os.PathLike, depth: int = 2) -> list[Path]:
    """Subfolders (``depth`` levels down) holding a model, e.g. the per-run folders of ``compare``."""
    folder = Path(folder)
    found = sorted(p.parent for p in folder.glob(f"*/{MODEL_NAME}"))
    if depth > 1 and not found:
        found = sorted(p.parent for p in folder.glob(f"*/*/{MODEL_NAME}"))
    return found


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def is_finetuned_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` (or the file it names) is a fine-tuned network written by finetune."""
    path = Path(run_dir)
    return (path / FINETUNED_MODEL).is_file() if path.is_dir() else path.name == FINETUNED_MODEL and path.is_file()


def is_codes_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a codes file (by its suffix, or an HDF5 file by its first bytes), not an image."""
    path = Path(path)
    return path.is_file() and (path.suffix.lower() in CODES_SUFFIXES or _is_hdf5(path))
