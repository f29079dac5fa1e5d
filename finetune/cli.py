"""The finetune command: its parser and handler."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnncodes.extract.cli_common import (BACKBONE_HELP, ENVIRONMENT_HELP, EXIT_INTERRUPTED, EXIT_OK,
                                         KeepsEnvironmentHelp, add_column_options, declared)
from cnncodes.extract.config import choices, from_args

from .options import FinetuneConfig as F


def add_parsers(sub) -> None:
    """Register finetune on the ``sub`` subparsers."""
    p = sub.add_parser(
        "finetune", help="fine-tune the backbone with a new head (images -> network + report)",
        epilog=ENVIRONMENT_HELP, formatter_class=KeepsEnvironmentHelp,
        description="Train part or all of the backbone with a new linear head on IMAGES (a folder tree root/CLASS/* "
                    "or root/{train,val,test}/CLASS/*, or a CSV manifest) and write into RUN_DIR the same reports "
                    "as classify (report.json, report.txt, confusion.csv/.png), finetuned.pt (for `cnncodes predict "
                    "RUN_DIR`), backbone.pth (for `cnncodes extract --weights RUN_DIR/backbone.pth`), epochs.jsonl "
                    "and learning_curve.png. The test split (else val) is only evaluated; the last epoch is kept, or "
                    "the best one on a validation set (the val split when a test split exists too, or a "
                    "--val-fraction of train). Each epoch is checkpointed: after Ctrl-C or a kill, the same command "
                    "resumes.")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the network, reports and checkpoint")
    g = p.add_argument_group("network")
    g.add_argument("--backbone", "--model", default=F.backbone,
                   help=BACKBONE_HELP)
    g.add_argument("--weights", metavar="FILE|random", help="starting checkpoint (default: found as for extract)")
    g.add_argument("--freeze", type=float, default=None, metavar="FRACTION",
                   help="share of the backbone's blocks kept fixed, counted from the input in the model's own "
                        "block order: 1 = linear probe (head only), 0 = train everything (default: 1/3, the first "
                        "third, as the notes advise for small data)")
    g.add_argument("--freeze-until", metavar="LAYER",
                   help="freeze every block up to and including the one holding LAYER (an alias or node name of "
                        "`cnncodes layers MODEL`), instead of --freeze")
    g.add_argument("--train-bn", action="store_true",
                   help="update BatchNorm statistics in the trained blocks. Off by default: the statistics of "
                        "batches of 32 are noisy estimates, and replacing the ImageNet ones with them hurts small "
                        "data sets; BatchNorm's scale and shift are still trained")
    g.add_argument("--resize", type=declared(F, "resize"), help="shorter side before the crop (default: the backbone's, e.g. 256)")
    g.add_argument("--crop", type=declared(F, "crop"), help="training and evaluation crop size (default: the backbone's, e.g. 224)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=F.epochs,
                   help="fine-tuning epochs (default: sized from the training images: at least 300 optimizer "
                        "steps and at least 6 epochs, e.g. 25 epochs for 360 images at batch 32)")
    t.add_argument("--lp-epochs", type=int, default=F.lp_epochs,
                   help="LP-FT: epochs training the head alone before the fine-tuning epochs (default: 0)")
    t.add_argument("--batch-size", type=declared(F, "batch_size"), default=F.batch_size, help="images per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=F.lr,
                   help="head learning rate (default: %(default)s for SGD; use about 0.001 with adamw)")
    t.add_argument("--backbone-lr-mult", type=float, default=F.backbone_lr_mult,
                   help="backbone learning rate = lr x this (default: %(default)s): pretrained weights move slowly")
    t.add_argument("--optimizer", default=F.optimizer, choices=choices(F, "optimizer"), help="SGD with momentum or AdamW "
                   "(default: %(default)s)")
    t.add_argument("--momentum", type=float, default=F.momentum, help="SGD momentum (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=F.weight_decay,
                   help="on weights, not on biases or BatchNorm (default: %(default)s)")
    t.add_argument("--warmup-epochs", type=float, default=F.warmup_epochs,
                   help="linear warm-up, then cosine decay to 0 (default: %(default)s)")
    t.add_argument("--label-smoothing", type=float, default=F.label_smoothing, help="(default: %(default)s)")
    t.add_argument("--class-weight", default=F.class_weight,
                   help="loss weights: balanced, none, or CLASS=W,CLASS=W (default: %(default)s)")
    t.add_argument("--sampling", default=F.sampling, choices=choices(F, "sampling"),
                   help="class-balanced draws per epoch: over to the largest class, under to the smallest "
                        "(default: %(default)s)")
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random resized crop + flip (on by default)")
    t.add_argument("--patience", type=int, help="stop when the validation score has not improved for this many "
                   "epochs; needs a validation set (default: run every epoch)")
    s = p.add_argument_group("data splits")
    s.add_argument("--val-fraction", type=float, default=F.val_fraction,
                   help="stratified share of train carved to choose the best epoch, when there is no val split "
                        "besides a test split (default: %(default)s: every training image trains and the last "
                        "epoch is kept, with no validation score)")
    s.add_argument("--test-fraction", type=float, help="hold out a stratified share for evaluation instead of the "
                   "split folders (default: the test split, else val, else 0.25)")
    s.add_argument("--max-train-images", type=int, help="train on a stratified sample of at most this many images")
    s.add_argument("--seed", type=int, default=F.seed, help="seed for splits, initialization, order and augmentation")
    r = p.add_argument_group("running")
    r.add_argument("--device", default=F.device, help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--precision", default=F.precision, choices=choices(F, "precision"),
                   help="auto = mixed precision on CUDA (bf16, else fp16 with loss scaling), fp32 on the CPU")
    r.add_argument("--threads", type=declared(F, "threads"), help="training threads (default: every CPU)")
    r.add_argument("--workers", type=declared(F, "workers"), help="decoding processes for the one-time image cache (default: every CPU)")
    r.add_argument("--overwrite", action="store_true", help="start again instead of resuming RUN_DIR's checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_column_options(p)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from cnncodes.finetune.options import check_options

    options = from_args(F, args)
    if args.freeze is None and args.freeze_until is None:
        options["freeze"] = F.freeze
    check_options(options)  # before torch loads: a bad value fails at once
    from cnncodes.classify.render import summarize
    from cnncodes.finetune import FinetuneInterrupted, finetune_images

    try:
        report = finetune_images(args.images, args.out, **options)
    except FinetuneInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    out = Path(args.out)
    print((out / "report.txt").read_text(encoding="utf-8"))
    print(f"written to {out}/: report.json report.txt confusion.csv confusion.png finetuned.pt backbone.pth "
          "epochs.jsonl learning_curve.png checkpoint.pt")
    print(summarize(report))
    return EXIT_OK
