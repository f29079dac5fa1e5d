"""Scenario advisor: measure an image set's size and similarity to ImageNet, pick the seeds' scenario 1-4,
recommend the commands for it (and with ``try_options``, score the most plausible ones).

Names are imported when first used (PEP 562), so that the command line builds its parser without torch.
"""
from importlib import import_module

_WHERE = {"advise_images": "advisor", "format_advice": "report", "MIN_SAMPLE": "advisor"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'advise' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
