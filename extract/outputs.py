"""The output guard of every command that writes (extract, classify, compare, run, finetune, advise, predict).

One rule set, checked before any long work, so the Python API and the command line behave alike:
- an output is never a folder of images being read, nor inside one: its files (confusion.png...)
  would be read as images, even as a new class, on the next run;
- one writer per output: extract/lock.py's lock beside it, which dies with its process;
- an output holding another run's files is not replaced without ``overwrite``; a rerun of the same
  run (``resumes``), which carries on, is not another run; a file of the run being read never is;
- folders are created when the work starts, and those it created are removed again when it fails
  before writing anything, so an error leaves no empty folder behind.
Torch-free: classify imports it.
"""
from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError
from .lock import output_lock

Sources = str | os.PathLike | Sequence[str | os.PathLike] | None
# What an existing folder holds, for the refusal (first match; glob patterns inside the folder)
KINDS = (("codes.h5*", "the codes of a run"), ("compare.csv", "a comparison"), ("*/model.joblib", "a comparison"),
         ("model.joblib", "a trained model"), ("finetuned.pt", "a fine-tuned network"),
         ("checkpoint.pt", "a fine-tuning run"), ("advice.json", "advice"))


def refuse_inside_images(out: str | os.PathLike, images: Sources) -> None:
    """ValueError when ``out`` is one of the image folders in ``images`` (a source or a list) or inside one."""
    target = Path(out).resolve()
    for source in [] if images is None else [images] if isinstance(images, (str, os.PathLike)) else images:
        folder = Path(source).resolve()
        if os.path.isdir(folder) and (target == folder or folder in target.parents):  # isdir: never raises
            raise UsageError(f"{out} is inside the image folder {source}: its files would be read as images on the "
                             "next run; choose an output outside it")


def refuse_replacing(out: Path, *, folder: bool, overwrite: bool = False,
                     resumes: Callable[[Path], bool] | None = None, run: Path | None = None) -> None:
    """ValueError when writing ``out`` (a folder, else a file) would replace another run's output."""
    if folder and out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; the output is a folder")
    if not folder and out.is_dir():
        raise UsageError(f"{out} is a folder; the output is a file name")
    if folder:
        held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if held and not overwrite and not (resumes and resumes(out)):
            kind = next((what for pattern, what in KINDS if next(out.glob(pattern), None)), "files")
            listed = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise UsageError(f"{out} already holds {kind} ({listed}); choose another output folder or pass "
                             "--overwrite (overwrite=True) to replace it")
    elif out.exists():
        if run is not None and run.resolve() in out.resolve().parents:
            raise UsageError(f"{out} is a file of the run {run} being used; write elsewhere")
        if not overwrite:
            raise UsageError(f"{out} exists; choose another name or pass --overwrite (overwrite=True) to replace it")


@contextmanager
def claim_output(out: str | os.PathLike, *, images: Sources = None, overwrite: bool = False, folder: bool = True,
                 resumes: Callable[[Path], bool] | None = None, run: str | os.PathLike | None = None) -> Iterator[Path]:
    """Hold ``out`` (a folder, else a file) for the block, after the checks above; yield it as a Path.

    ``resumes(out)``: True when ``out`` holds this same run, which carries on; ``run``: the run folder
    (or its model file) being read, whose files are never replaced. Raises ValueError, or
    ExtractionError naming the process writing ``out`` now; the folders it made are removed again
    when the block fails before writing into them.
    """
    out = Path(out)
    refuse_inside_images(out, images)
    run_dir = None if run is None else Path(run) if Path(run).is_dir() else Path(run).parent
    created = _missing_folders(out.resolve() if folder else out.resolve().parent)
    try:
        _make_folder(out.resolve().parent)
        with output_lock(out.resolve(), by="run"):
            refuse_replacing(out, folder=folder, overwrite=overwrite, resumes=resumes, run=run_dir)
            if folder:
                _make_folder(out)
            yield out
    except BaseException:
        for made in reversed(created):  # innermost first; stops at the first that holds something
            try:
                made.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break
        raise


def guards_output(out: str, *, images: str | None = None, folder: bool = True,
                  resumes: Callable[[Path], bool] | None = None, run: str | None = None) -> Callable:
    """Decorate an entry point so that claim_output holds its argument ``out`` (when not None) for the call.

    ``images`` and ``run`` name the arguments holding the images read and the run folder used; the
    function's ``overwrite`` argument, when it has one, allows replacing.
    """
    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def guarded(*args, **kwargs):
            given = signature.bind(*args, **kwargs)
            given.apply_defaults()
            where = given.arguments
            if where[out] is None:
                return func(*args, **kwargs)
            with claim_output(where[out], images=where[images] if images else None, folder=folder,
                              overwrite=bool(where.get("overwrite")), resumes=resumes,
                              run=where[run] if run else None):
                return func(*args, **kwargs)
        return guarded
    return decorate


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write to output directory {folder}: {err.strerror or err}") from None


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]
