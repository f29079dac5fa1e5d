"""Installed packages' versions, for the codes file's provenance and the converted-model cache key, read without
importing the packages (a warm run never loads torch) and without ``importlib.metadata``: its import and its
parsing of torch's METADATA cost a run's main thread 15-30 ms of CPU at start-up (bench/RESULTS.md).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def installed_version(name: str) -> str | None:
    """The version of the installed distribution ``name`` (whose top-level package is ``name`` too), or None.
    A wheel's install leaves ``{name}-{version}.dist-info`` beside the package (the version in the folder's name,
    PEP 427); anything else (an egg-info, two such folders) is asked of ``importlib.metadata``."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [spec.origin or ""])
    found = {p.name[len(name) + 1:-len(".dist-info")] for folder in folders if folder
             for p in Path(folder).parent.glob(f"{name}-*.dist-info")}
    if len(found) == 1:
        return found.pop()
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_versions(*names: str) -> dict[str, str]:
    """{name: version} of those of ``names`` that are installed."""
    return {name: version for name in names if (version := installed_version(name)) is not None}
