"""Scenario advisor: measure an image set's size and similarity to ImageNet, pick the seeds' scenario 1-4,
recommend the commands for it (and with ``try_options``, score the most plausible ones).

Names are imported when first used (PEP 562), so that the command line builds its parser without torch.
"""
import sys

from cnncodes import CallablePackage, lazy_names

_WHERE = {"advise_images": "advisor", "format_advice": "report", "MIN_SAMPLE": "options"}
__all__ = list(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)


sys.modules[__name__].__class__ = CallablePackage  # cnncodes.advise(...) is also the API function
