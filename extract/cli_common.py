"""What every stage's command line shares: exit codes, number types, the running and manifest-column options."""
from __future__ import annotations

import argparse

from .checks import CONSTRAINTS, SHARD_FORMAT, whole
from .config import choices, constraint
from .options import ExtractConfig

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_LISTED_FAILURES = 20
ENVIRONMENT_HELP = """environment:
  CNNCODES_OFFLINE=1        never download weights
  CNNCODES_DOWNLOAD_BASE    a mirror to download torchvision checkpoints from
  TORCH_HOME                where the torch hub cache of checkpoints is ($TORCH_HOME/hub/checkpoints)
  CNNCODES_CACHE_DIR        where networks converted for OpenVINO are kept between runs, so a rerun
                            starts faster (default ~/.cache/cnncodes/openvino; off: no cache; delete the
                            folder to clear it)"""


def _number(kind: type, ok, what: str):
    """An argparse ``type=`` that converts with ``kind`` and refuses values failing ``ok`` in one line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


def declared(config: type, name: str, kind: type = int):
    """The argparse ``type=`` of ``config``'s option ``name``: its declared constraint, refused as argparse does."""
    return _number(kind, *constraint(config, name))


positive_int = _number(int, whole(1), "a whole number >= 1")  # options no config declares (layers --crop)
positive_float = _number(float, *CONSTRAINTS["C"])
fraction = _number(float, *CONSTRAINTS["test_fraction"])
cv_folds = _number(int, *CONSTRAINTS["cv"])


def shard_of(text: str) -> tuple[int, int]:
    """--shard R/N -> (R, N), refused in one line unless 0 <= R < N."""
    rank, sep, count = text.partition("/")
    try:
        r, n = int(rank), int(count)
    except ValueError:
        r, n = -1, 0
    if not sep or not CONSTRAINTS["shard"][0]((r, n)):
        raise argparse.ArgumentTypeError(f"must be {SHARD_FORMAT} (shard R of N), got {text!r}")
    return r, n


class KeepsEnvironmentHelp(argparse.HelpFormatter):
    """Wraps descriptions as usual, but prints the environment table as it is laid out."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return text if text == ENVIRONMENT_HELP else super()._fill_text(text, width, indent)


def add_running_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--device, --precision, --batch-size, --workers, --quiet of the commands that run the backbone."""
    r = p.add_argument_group("running")
    r.add_argument("--device", default=ExtractConfig.device, help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--precision", default=ExtractConfig.precision, choices=choices(ExtractConfig, "precision"),
                   help="compute precision, recorded in the codes file; auto = bf16 on CPUs with native bf16 "
                        "(AMX, AVX512-BF16), else fp32; bf16/fp16 on GPUs")
    r.add_argument("--batch-size", type=declared(ExtractConfig, "batch_size"), default=None, help="images decoded together and run in one forward pass (default: on the CPU 4 decoded together, run 2 at a time in fp32 and all 4 in bf16, where small passes are fastest; 64 on GPU)")
    r.add_argument("--workers", type=declared(ExtractConfig, "workers"), default=None,
                   help="image decoding processes; the main process runs the network (on the CPU: OpenVINO, "
                        "one single-threaded stream per CPU) (default: one per CPU, at most 16; on a GPU CPUs - 1). "
                        "0: decode in the main process")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return r


COLUMN_KWARGS = ("path_column", "label_column", "split_column")


def add_column_options(p: argparse.ArgumentParser) -> None:
    """--path-column, --label-column, --split-column: which header column of a CSV manifest is which."""
    g = p.add_argument_group("manifest columns", "which header column of a CSV manifest is which, when it "
                             "uses other names than path, label, split (a column not understood is refused "
                             "unless these are given; the columns they leave unnamed are then ignored)")
    for name in COLUMN_KWARGS:
        role = name.split("_")[0]
        g.add_argument(f"--{name.replace('_', '-')}", metavar="NAME", help=f"the manifest's {role} column")


def column_kwargs(args: argparse.Namespace) -> dict:
    """The manifest-column options of ``args`` as keywords."""
    return {name: getattr(args, name) for name in COLUMN_KWARGS}


def one_or_list(paths: list[str]) -> str | list[str]:
    """One path as is, several as the list list_images reads as one collection."""
    return paths[0] if len(paths) == 1 else paths


def split_list(text: str) -> list[str]:
    """A comma-separated option value as its non-empty, stripped entries."""
    return [t.strip() for t in text.split(",") if t.strip()]


BACKBONE_HELP = ("mobilenet_v2, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 (embedded: work offline), "
                 "alexnet, vgg16, resnet18, resnet50 (default: %(default)s)")
