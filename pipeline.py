"""cnncodes command line: assembles each stage's commands (extract/cli.py, classify/cli.py, ...) and runs them with
one set of process settings and exit codes."""
from __future__ import annotations

import argparse
import os
import sys

from cnncodes import __version__
from cnncodes.advise import auto_cli, cli as advise_cli
from cnncodes.classify import cli as classify_cli
from cnncodes.extract import cli as extract_cli
from cnncodes.extract.cli_common import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, shard_of  # noqa: F401
from cnncodes.finetune import cli as finetune_cli


def _show_warning(command: str):
    """Warnings as one line each, ``cnncodes CMD: warning: ...``, without source paths (above any progress bar)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from tqdm import tqdm

        tqdm.write(f"cnncodes {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
    return show


def build_parser() -> argparse.ArgumentParser:
    """The `cnncodes` parser: every stage's commands under one program."""
    parser = argparse.ArgumentParser(
        prog="cnncodes",
        description="Transfer learning with CNN codes: extract ReLU'd activations of a frozen ImageNet ConvNet "
                    "once into an HDF5 codes file, then train, compare and evaluate linear SVM / softmax "
                    "classifiers on them.")
    parser.add_argument("--version", action="version", version=f"cnncodes {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    extract_cli.add_parsers(sub)  # each stage registers its own commands
    classify_cli.add_parsers(sub)
    finetune_cli.add_parsers(sub)
    advise_cli.add_parsers(sub)
    auto_cli.add_parsers(sub)
    return parser


def process_settings() -> None:
    """Settings of the whole process, made before NumPy and torch load (the benchmarks' children make them too).
    OpenMP threads sleep instead of spinning: spinning threads collapse throughput on a busy machine
    where decoders and the forward pass share the cores. OpenBLAS's (NumPy's) spin at most 2^20 cycles after a
    call, not 2^28: importing NumPy makes one call, and that spin took a core from the decoders at
    every run's start (figures in bench/RESULTS.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


def _weights_errors() -> tuple[type[Exception], ...]:
    """WeightsNotFound, when the weights module is loaded (it imports torch; `info` never loads it)."""
    weights = sys.modules.get("cnncodes.extract.weights")
    return (weights.WeightsNotFound,) if weights else ()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cnncodes` console script."""
    args = build_parser().parse_args(argv)
    process_settings()
    import warnings

    warnings.showwarning = _show_warning(args.command)
    from cnncodes.extract.errors import ExtractionError, ExtractionInterrupted

    try:
        return args.func(args)
    except ExtractionInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except (ExtractionError, *_weights_errors(), FileNotFoundError, PermissionError) as err:
        print(f"cnncodes {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"cnncodes {args.command}: error: {err} (nothing was overwritten)", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if is_usage_error(err):
            print(f"cnncodes {args.command}: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        return _report_bug(args.command, err)


def is_usage_error(err: Exception) -> bool:
    """Whether ``err`` is the user's mistake (exit 2), not a bug (exit 1): a UsageError (raised where the input
    is checked) or argparse's own error. Any other exception, a plain ValueError included, is a bug."""
    from cnncodes.extract.errors import UsageError

    return isinstance(err, (UsageError, argparse.ArgumentError, argparse.ArgumentTypeError))


def _report_bug(command: str, err: Exception) -> int:
    """One line naming the unexpected exception (a bug) and the file its traceback was written to."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix=f"cnncodes-{command}-", suffix=".traceback.txt")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        traceback.print_exception(err, file=fh)
    from cnncodes.extract.codesfile import short

    first = short(str(err), 300)
    print(f"cnncodes {command}: internal error (a bug, please report it): {type(err).__name__}: {first}; "
          f"traceback in {path}", file=sys.stderr)
    return EXIT_FAILURES


if __name__ == "__main__":
    sys.exit(main())
