"""The errors an extraction reports to its caller (torch-free, so that the command line can name them)."""


class ExtractionError(RuntimeError):
    """The extraction cannot go on; the message says why and what to do."""


class ExtractionInterrupted(ExtractionError):
    """Stopped by the user (Ctrl-C); finished parts are kept for a resume."""


class UsageError(ValueError):
    """Bad input from the user (an option, a path, a file of the wrong kind): the command line exits 2.

    A ValueError, so that callers catching ValueError keep working; any other exception is a bug."""
