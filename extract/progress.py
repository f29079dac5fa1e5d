"""Progress bars: tqdm's, drawn as widgets where a notebook runs, as text elsewhere.

This is ``tqdm.auto`` without its asyncio half, which no bar here needs and whose import every run paid at its
start (figures in bench/RESULTS.md).
"""
from __future__ import annotations

import warnings


def progress_bar(**options):
    """``tqdm(**options)``: a widget in Jupyter, text elsewhere."""
    from tqdm import TqdmExperimentalWarning

    with warnings.catch_warnings():  # tqdm.autonotebook says it is experimental; tqdm.auto silences it too
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm
    return tqdm(**options)
