"""The errors an extraction reports to its caller (torch-free, so that the command line can name them)."""


class ExtractionError(RuntimeError):
    """The extraction cannot go on; the message says why and what to do."""


class ExtractionInterrupted(ExtractionError):
    """Stopped by the user (Ctrl-C); finished parts are kept for a resume."""
