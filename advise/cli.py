"""The advise command: its parser and handler."""
from __future__ import annotations

import argparse

from cnncodes.extract.cli_common import (BACKBONE_HELP, ENVIRONMENT_HELP, EXIT_OK, KeepsEnvironmentHelp,
                                         add_column_options, add_running_options, declared)
from cnncodes.extract.config import from_args

from .options import AdviseConfig as A
from .options import check_options


def add_parsers(sub) -> None:
    """Register advise on the ``sub`` subparsers."""
    p = sub.add_parser(
        "advise", help="which transfer-learning scenario (1-4) fits IMAGES, and the commands to run",
        epilog=ENVIRONMENT_HELP, formatter_class=KeepsEnvironmentHelp,
        description="Measure the training images' size (images per class, imbalance) and similarity to ImageNet "
                    "(one backbone pass over a stratified sample: LEEP of the ImageNet head on the labels, cross-fitted "
                    "on held-out folds, and cross-validated linear probes of the top and earlier layers; the head's "
                    "entropy is reported, not counted), map them to the "
                    "notes' scenario 1-4 (small/large x similar/different) and print the recommended commands "
                    "with the figures behind them. Training data only: test/ and val/ are never used when "
                    "train/ exists.")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--sample", type=int, default=A.sample,
                   help="training images for the similarity pass, stratified by class (default: %(default)s)")
    p.add_argument("--try", dest="try_options", action="store_true",
                   help="also score the most plausible options side by side: the linear probes, and a 3-epoch "
                        "fine-tune on at most --sample images, validated on a share of the training images")
    p.add_argument("--out", metavar="DIR", help="keep advice.json, advice.txt and the --try fine-tune here")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a DIR that holds files already (its advice files are replaced)")
    p.add_argument("--json", action="store_true", help="print the advice as JSON (for scripts)")
    p.add_argument("--seed", type=int, default=A.seed, help="seed for the sample, folds and fine-tune (default: 0)")
    add_backbone_options(p)
    p.set_defaults(func=cmd_advise)


def add_backbone_options(p: argparse.ArgumentParser) -> None:
    """The backbone, preprocessing, running and manifest-column options of advise, which auto shares (it advises
    with them and trains its candidates with them), checked as AdviseConfig declares."""
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", "--model", default=A.backbone,
                   help=BACKBONE_HELP)
    g.add_argument("--weights", metavar="FILE|random", help="checkpoint (default: found as for extract)")
    g.add_argument("--resize", type=declared(A, "resize"), help="shorter side before the crop (default: the backbone's, e.g. 256)")
    g.add_argument("--crop", type=declared(A, "crop"), help="center crop size (default: the backbone's, e.g. 224)")
    add_running_options(p)
    add_column_options(p)


def cmd_advise(args: argparse.Namespace) -> int:
    import json

    options = {**from_args(A, args), "out_dir": args.out}
    check_options(options)  # before torch loads
    from cnncodes.advise import advise_images, format_advice

    advice = advise_images(args.images, **options)
    print(json.dumps(advice, indent=2) if args.json else format_advice(advice))
    return EXIT_OK
