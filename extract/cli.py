"""The extract stage's commands: extract, assemble, info, export, layers and dataset (parsers and handlers)."""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from .cli_common import (BACKBONE_HELP, ENVIRONMENT_HELP, EXIT_FAILURES, EXIT_OK, MAX_LISTED_FAILURES, KeepsEnvironmentHelp,
                         add_column_options, add_running_options, declared, fraction, one_or_list,
                         positive_int, shard_of)
from .config import choices, from_args
from .errors import UsageError
from .names import tap_names
from .options import ExtractConfig as E
from .options import check_options


def add_parsers(sub) -> None:
    """Register extract, assemble, info, export, layers and dataset on the ``sub`` subparsers."""
    p = sub.add_parser("extract", help="images -> codes file (HDF5)",
                       epilog=ENVIRONMENT_HELP, formatter_class=KeepsEnvironmentHelp,
                       description="Run the backbone over a folder tree (root/CLASS/* or root/{train,val,test}/CLASS/*) "
                                   "a CSV manifest (path,label[,split]), or image files and folders, and write "
                                   "ReLU'd codes to an HDF5 file. "
                                   "A killed run resumes when the same command is run again.")
    p.add_argument("source", nargs="+", metavar="SOURCE",
                   help="image folder, CSV manifest (.csv, .tsv, .txt), or image files and folders (several: one "
                        "collection under their common folder; each folder labelled as it would be alone, image "
                        "files unlabeled)")
    p.add_argument("-o", "--out", required=True, help="codes file to write, e.g. codes.h5")
    add_extract_options(p)
    add_column_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing codes file made otherwise")
    p.add_argument("--update", action="store_true", help="extract only new or modified images into an existing file")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any image could not be read")
    p.add_argument("--shard", type=shard_of, metavar="R/N",
                   help="extract only shard R of N (0 <= R < N) into OUT's shared parts folder, e.g. one Slurm array "
                        "task each; the last shard to finish assembles OUT (or `cnncodes assemble OUT`). Under "
                        "torchrun the shard comes from RANK / WORLD_SIZE, and each rank uses the GPU of its LOCAL_RANK")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("assemble", help="write a sharded extraction's codes file from its parts",
                       description="Assemble OUT from the parts that the shards of `cnncodes extract --shard` (or "
                                   "torchrun) saved in OUT.parts: only needed when the last shard did not (it "
                                   "was killed); names the missing shards when some parts are missing.")
    p.add_argument("out", metavar="OUT", help="the codes file the shards were extracting, e.g. codes.h5")
    p.set_defaults(func=cmd_assemble)

    p = sub.add_parser("info", help="describe a codes file", description="Print a codes file's recipe, counts per "
                       "class and split, and its failed images.")
    p.add_argument("codes", help="codes file (HDF5)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="codes file -> npy + parquet, or one parquet table",
                       description="Write a codes file in the formats other tools read without h5py: --to npy "
                                   "writes the folder OUT with one TAP.npy per tap (float32 [N, D], memory-mappable) "
                                   "and rows.parquet (path, label, label_index, split, ok, error) in the same row "
                                   "order; --to parquet writes the file OUT with those columns and one list<float32> "
                                   "column per tap. Failed images are kept (codes NaN, with their error) unless "
                                   "--ok-only. The recipe and class names are in the parquet schema's metadata.")
    p.add_argument("codes", help="codes file (HDF5)")
    p.add_argument("--to", choices=("npy", "parquet"), required=True, help="the output format")
    p.add_argument("out", metavar="OUT", help="output folder (npy) or file (parquet)")
    p.add_argument("--ok-only", action="store_true", help="leave out the images that could not be read")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("layers", help="list the tappable layers of a backbone",
                       description="List layers with output shapes and aliases. Without --all, only layers whose "
                                   "outputs are non-negative (after a ReLU), which are valid CNN codes.")
    p.add_argument("model", help="backbone name, e.g. mobilenet_v2, alexnet, vgg16, resnet18, resnet50")
    p.add_argument("--all", action="store_true", help="list every graph node, including pre-activation ones")
    p.add_argument("--crop", type=positive_int, help="input size used to compute shapes (default: the backbone's)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("dataset", help="write a built-in dataset as an image folder tree",
                       description="Write a real dataset that ships with scikit-learn as PNG files, offline.")
    p.add_argument("name", choices=("digits",), help="digits: 1,797 handwritten digit scans (8x8), 10 classes")
    p.add_argument("folder", help="where to write it, e.g. data/digits")
    p.add_argument("--test-fraction", type=fraction, default=0.3, help="share put under test/ (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty FOLDER whole (written aside, then swapped in); without it a non-empty "
                        "folder is refused")
    p.set_defaults(func=cmd_dataset)


def add_extract_options(p: argparse.ArgumentParser, with_layer: bool = True) -> None:
    """The backbone, taps and running options of extract and run."""
    g = p.add_argument_group("backbone and taps")
    g.add_argument("--backbone", "--model", default=E.backbone,
                   help=BACKBONE_HELP)
    if with_layer:
        g.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                       help="layer to tap: an alias (penultimate, fc6, fc7, block1..., see `cnncodes layers MODEL`) "
                            "or a torchvision node name; repeat (or a,b) to tap several layers in one forward pass. "
                            "In `run`, each --layer (or comma-separated entry) is one run and a+b concatenates "
                            "taps (default: penultimate)")
    g.add_argument("--pool", default=E.pool, choices=choices(E, "pool"),
                   help="how conv maps become vectors: global average, global max, or none (whole map, "
                        "guarded by --max-dim) (default: %(default)s)")
    g.add_argument("--weights", metavar="FILE|random",
                   help="checkpoint file to load (weights_only); 'random' for an untrained network (tests). Default: "
                        "the embedded checkpoint, then the torch hub cache, then a download")
    g.add_argument("--resize", type=declared(E, "resize"), help="shorter side before the crop (default: the backbone's, e.g. 256)")
    g.add_argument("--crop", type=declared(E, "crop"), help="center crop size (default: the backbone's, e.g. 224)")
    g.add_argument("--max-dim", type=declared(E, "max_dim"), default=E.max_dim, help="largest code allowed with --pool none (default: %(default)s)")
    g.add_argument("--views", type=int, default=E.views, choices=choices(E, "views"),
                   help="crops whose codes are averaged per image: 1 center crop, 2 + its horizontal flip, 10 the "
                        "four corner and center crops and their flips (TenCrop). Part of the recipe. Time grows "
                        "linearly with views: an image's views ride in one forward pass of --batch-size x views "
                        "crops (default: %(default)s)")
    r = add_running_options(p)
    r.add_argument("--part-size", type=declared(E, "part_size"), default=E.part_size,
                   help="images per part file; a killed run recomputes at most one part (default: 512)")
    r.add_argument("--dtype", default=E.dtype, choices=choices(E, "dtype"), help="stored code type")


def extract_kwargs(args: argparse.Namespace) -> dict:
    """The extract options of ``args`` as extract_codes' keywords (extract and run)."""
    options = {**from_args(E, args), "layers": tap_names(args.layers or E.layers)}
    check_options(options)
    return options


def check_preprocess(args: argparse.Namespace) -> None:
    """--resize below --crop (given, or the backbone's default) would not fit the crop: refuse it up front."""
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.recipe import preprocess_config

    prep = preprocess_config(get_backbone(args.backbone), args.resize, args.crop)
    if prep["resize"] < prep["crop"]:
        raise UsageError(f"--resize {prep['resize']} is smaller than --crop {prep['crop']}: the center crop must "
                         "fit in the resized image (use --resize >= --crop)")


def cmd_extract(args: argparse.Namespace) -> int:
    from cnncodes.extract import extract_codes
    from cnncodes.extract.shards import resolve

    check_preprocess(args)
    if Path(args.out).is_dir():
        raise UsageError(f"-o {args.out} is a folder; -o names the codes file to write, e.g. -o codes.h5")
    result = extract_codes(one_or_list(args.source), args.out, shard=resolve(args.shard, os.environ),
                           **extract_kwargs(args))
    print_extract_summary(result)
    if result.missing_parts:
        earlier = f" ({result.resumed_parts} by an earlier run)" if result.resumed_parts else ""
        print(f"shard {result.shard} done: its {result.shard_parts} of the {result.n_parts} parts are saved{earlier}; "
              f"{len(result.missing_parts)} part(s) of other shards are missing: {result.path} is assembled when the "
              f"last shard finishes, or by `cnncodes assemble {result.path}`")
        return EXIT_OK
    if none_usable(result, "extract"):
        return EXIT_FAILURES
    return EXIT_FAILURES if (args.strict and result.failures) else EXIT_OK


def cmd_assemble(args: argparse.Namespace) -> int:
    from cnncodes.extract.shards import assemble_codes

    print(f"wrote {args.out}" if assemble_codes(args.out) else f"{args.out} is complete: nothing to assemble")
    return EXIT_OK


def none_usable(result, command: str) -> bool:
    """True, with one error line, when not a single image of the collection could be read."""
    if not result.n_images or len(result.failures) < result.n_images:
        return False
    path, reason = result.failures[0]
    print(f"cnncodes {command}: error: none of the {result.n_images} image(s) could be read (first: {path}: "
          f"{reason}); {result.path} holds no usable codes", file=sys.stderr)
    return True


def print_extract_summary(result) -> None:
    for note in result.notes:
        print(f"note: {note}")
    if result.up_to_date:
        print(f"{result.path} is up to date: {result.n_images} images, nothing to extract")
    elif result.missing_parts:
        pass  # a shard whose file is assembled by another: cmd_extract says so
    else:
        resumed = (f", {result.n_reused} reused: resumed from {result.resumed_parts} saved part(s)"
                   if result.resumed_parts else "")
        runtime = f", {result.runtime}" if result.runtime else ""
        done = (f"{result.n_extracted} extracted{f' by shard {result.shard}' if result.shard else ''} in "
                f"{result.seconds:.1f} s ({result.images_per_second:.1f} images/s{runtime}){resumed}")
        if result.shard and not result.assembled:
            print(f"shard {result.shard} done: {done}; {result.path} was assembled by another shard")
        else:
            print(f"wrote {result.path}: {result.n_images} images, {done}")
    if result.failures:
        print(f"{len(result.failures)} image(s) could not be read (ok=false in the file, codes NaN):")
        for path, reason in result.failures[:MAX_LISTED_FAILURES]:
            print(f"  {path}: {reason}")
        if len(result.failures) > MAX_LISTED_FAILURES:
            print(f"  ... and {len(result.failures) - MAX_LISTED_FAILURES} more: see `cnncodes info {result.path}`")


def cmd_info(args: argparse.Namespace) -> int:
    from cnncodes.extract import open_codes

    cf = open_codes(args.codes)
    meta, rows = cf.meta, cf.rows
    weights = meta.get("weights", {})
    prep = meta.get("preprocess", {})
    print(f"{cf.path}: {len(rows)} images, {int(rows.ok.sum())} ok, {int((~rows.ok).sum())} failed")
    print(f"backbone: {meta.get('backbone')}  weights: {weights.get('name')} ({weights.get('source')}, "
          f"sha256 {str(weights.get('sha256'))[:16] or '-'})")
    for tap in meta.get("taps", []):
        print(f"tap {tap['name']}: node {tap['node']}, pool {tap['pool']}, {tap['dim']}-D "
              f"(map {'x'.join(map(str, tap['shape']))}), ReLU'd")
    print(f"preprocess: resize {prep.get('resize')}, crop {prep.get('crop')}, {prep.get('interpolation')}, "
          f"mean {prep.get('mean')}, std {prep.get('std')}; views: {cf.recipe.get('views', 1)}")
    print(f"precision: {meta.get('precision')} on {meta.get('device')}, stored as {meta.get('dtype')}; "
          f"versions: {meta.get('versions')}")
    print(f"image root: {meta.get('image_root')}")
    names = cf.class_names
    counts = Counter((s or "-", names[label] if label >= 0 else "(unlabeled)") for s, label in zip(rows.split, rows.labels))
    splits = sorted({s for s, _ in counts})
    print("\ncounts per class and split:")
    print(f"  {'class':<24}" + "".join(f"{s:>8}" for s in splits))
    for name in [*names, "(unlabeled)"]:
        line = [counts.get((s, name), 0) for s in splits]
        if any(line):
            print(f"  {name:<24}" + "".join(f"{c:>8}" for c in line))
    failures = [(p, e) for p, e, ok in zip(rows.paths, rows.errors, rows.ok) if not ok]
    if failures:
        print(f"\nfailed images ({len(failures)}):")
        for path, reason in failures:
            print(f"  {path}: {reason}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from cnncodes.extract.export import export_codes

    out = export_codes(args.codes, args.out, to=args.to, ok_only=args.ok_only, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to})")
    return EXIT_OK


def cmd_layers(args: argparse.Namespace) -> int:
    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.recipe import preprocess_config
    from cnncodes.extract.taps import describe_layers
    from cnncodes.extract.weights import RANDOM, WeightsInfo, build_model

    backbone = get_backbone(args.model)
    crop = args.crop or preprocess_config(backbone)["crop"]
    model = build_model(backbone, WeightsInfo(RANDOM, RANDOM, ""))  # shapes do not depend on the weights
    rows = describe_layers(backbone, model, crop, show_all=args.all)
    print(f"{backbone.name}: tappable layers for a {crop}x{crop} input "
          f"({'all nodes' if args.all else 'non-negative outputs only; --all for every node'})")
    print(f"{'node':<28} {'output shape':<16} {'code dim':>8}  {'ReLU':<4}  aliases")
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        print(f"{row['node']:<28} {shape:<16} {row['dim']:>8}  {'yes' if row['relu'] else 'no':<4}  "
              f"{', '.join(row['aliases'])}")
    return EXIT_OK


def cmd_dataset(args: argparse.Namespace) -> int:
    from cnncodes.extract.datasets import write_digits

    counts = write_digits(Path(args.folder), test_fraction=args.test_fraction, seed=args.seed,
                          overwrite=args.overwrite)
    print(f"wrote {sum(counts.values())} images to {args.folder} "
          f"({', '.join(f'{n} {split}' for split, n in counts.items())})")
    return EXIT_OK

