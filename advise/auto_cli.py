"""`cnncodes auto IMAGES --out RUN_DIR [--budget 15m]`: its parser and handler (the work is in advise/auto.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnncodes.extract import cli_common as cli

from .cli import add_backbone_options


def _budget(text: str) -> str:
    """--budget checked while parsing (a bad value fails before anything loads), kept as written."""
    from cnncodes.extract.errors import UsageError

    from .auto_plan import parse_budget

    try:
        parse_budget(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--budget ")) from None
    return text


def add_parsers(sub) -> None:
    """Register `auto` on the command line's subparsers."""
    p = sub.add_parser(
        "auto", help="advise, train the plausible candidates within a time budget, keep the winner",
        epilog=cli.ENVIRONMENT_HELP, formatter_class=cli.KeepsEnvironmentHelp,
        description="Run the advisor, then train codes classifiers (svm, softmax on the top layer, the best "
                    "earlier layer and both) and fine-tunes (the advised freeze, then its neighbours) cheapest "
                    "first within --budget. Every candidate is cross-fitted on the same 3 stratified folds of the "
                    "training split and scored by the balanced accuracy of its out-of-fold predictions ± its "
                    "standard error; the best of the cheapest kind (codes, then fine-tunes) within one "
                    "standard error (of the paired difference) of the best wins, is refit on the whole "
                    "training split into RUN_DIR/winner (for `cnncodes predict`) and evaluated once on the "
                    "test split (else val): the honest estimate. Writes leaderboard.csv, report.txt and "
                    "auto.json; a rerun resumes.")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the run")
    p.add_argument("--budget", type=_budget, default="15m",
                   help="time for the whole run, e.g. 15m, 90s, 1h30m; candidates that do not fit are skipped "
                        "(the cheapest always runs) and fine-tuning epochs are sized from it (default: %(default)s)")
    p.add_argument("--candidates", default="codes,finetune",
                   help="kinds of candidate: codes, finetune or both (default: %(default)s)")
    p.add_argument("--epochs", type=cli.positive_int,
                   help="fine-tuning epochs (default: sized from the budget, at least 300 steps where time allows)")
    p.add_argument("--sample", type=int, help="training images for the advice (default: advise's, 500)")
    p.add_argument("--seed", type=int, default=0, help="seed for the splits, folds and fine-tunes (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming RUN_DIR's run")
    add_backbone_options(p)
    p.set_defaults(func=cmd_auto)


def cmd_auto(args: argparse.Namespace) -> int:
    from cnncodes.extract.errors import ExtractionInterrupted

    from .auto import LOG, auto_images

    try:
        auto_images(args.images, args.out, budget=args.budget, candidates=args.candidates, backbone=args.backbone,
                    weights=args.weights, resize=args.resize, crop=args.crop, device=args.device,
                    precision=args.precision, batch_size=args.batch_size, workers=args.workers, sample=args.sample,
                    epochs=args.epochs, seed=args.seed, progress=not args.quiet, overwrite=args.overwrite,
                    **cli.column_kwargs(args))
    except (KeyboardInterrupt, ExtractionInterrupted, *_finetune_interrupted()):
        print(f"\ninterrupted: the finished candidates are kept in {Path(args.out) / LOG}; run the same command "
              "again to resume", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print((Path(args.out) / "report.txt").read_text(encoding="utf-8"), end="")
    return cli.EXIT_OK


def _finetune_interrupted() -> tuple[type[Exception], ...]:
    """FinetuneInterrupted, when finetune's trainer is loaded (it imports torch; a bad option never loads it)."""
    train = sys.modules.get("cnncodes.finetune.train")
    return (train.FinetuneInterrupted,) if train else ()
