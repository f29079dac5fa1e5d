"""Progress bars: tqdm's, drawn as widgets where a notebook runs, as text elsewhere.

This is ``tqdm.auto`` without its asyncio half, which no bar here needs and whose import every run paid at its
start (figures in bench/RESULTS.md). A run without bars does not import tqdm at all.
"""
from __future__ import annotations

import warnings


class NoBar:
    """What a disabled bar does (nothing), without importing tqdm."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(disable: bool = False, **options):
    """``tqdm(**options)``: a widget in Jupyter, text elsewhere; ``NoBar()`` when ``disable``."""
    if disable:
        return NoBar()
    from tqdm import TqdmExperimentalWarning

    with warnings.catch_warnings():  # tqdm.autonotebook says it is experimental; tqdm.auto silences it too
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm
    return tqdm(**options)
