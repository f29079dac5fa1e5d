"""cnncodes command line: argument parsing, progress and exit codes; the work is in extract/ and classify/."""
from __future__ import annotations

import argparse
import os
import sys

# Before torch loads: OpenMP threads that sleep instead of spinning. Spinning threads collapsed throughput
# 10x on a busy 2-core machine (when decoding and a multi-threaded forward pass share the cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections import Counter
from pathlib import Path

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_LISTED_FAILURES = 20
ENVIRONMENT_HELP = """environment:
  CNNCODES_OFFLINE=1        never download weights
  CNNCODES_DOWNLOAD_BASE    a mirror to download torchvision checkpoints from
  TORCH_HOME                where the torch hub cache of checkpoints is ($TORCH_HOME/hub/checkpoints)
  CNNCODES_CACHE_DIR        where traced networks are kept between runs, so a rerun starts faster
                            (default ~/.cache/cnncodes/traces; off: no cache; delete the folder to clear it)"""


class _KeepsEnvironmentHelp(argparse.HelpFormatter):
    """Wraps descriptions as usual, but prints the environment table as it is laid out."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return text if text == ENVIRONMENT_HELP else super()._fill_text(text, width, indent)


def _add_running_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision; auto = fp32 on CPU, bf16/fp16 on GPU")
    r.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 4 on CPU, where small batches are fastest; 64 on GPU)")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes. On the CPU each one decodes images and runs the network with one "
                        "thread (default: one per CPU, at most 16); on a GPU they only decode (default: CPUs - 1). "
                        "0: everything in the main process")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return r


def _add_extract_options(p: argparse.ArgumentParser, with_layer: bool = True) -> None:
    g = p.add_argument_group("backbone and taps")
    g.add_argument("--backbone", "--model", default="mobilenet_v2",
                   help="torchvision backbone: mobilenet_v2 (embedded, works offline), alexnet, vgg16, resnet18, "
                        "resnet50 (default: %(default)s)")
    if with_layer:
        g.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                       help="layer to tap: an alias (penultimate, fc6, fc7, block1..., see `cnncodes layers MODEL`) "
                            "or a torchvision node name; repeat to tap several layers in one forward pass "
                            "(default: penultimate)")
    g.add_argument("--pool", default="avg", choices=("avg", "max", "none"),
                   help="how conv maps become vectors: global average, global max, or none (whole map, "
                        "guarded by --max-dim) (default: %(default)s)")
    g.add_argument("--weights", metavar="FILE|random",
                   help="checkpoint file to load (weights_only); 'random' for an untrained network (tests). Default: "
                        "the embedded checkpoint, then the torch hub cache, then a download")
    g.add_argument("--resize", type=int, help="shorter side before the crop (default: the backbone's, 256)")
    g.add_argument("--crop", type=int, help="center crop size (default: the backbone's, 224)")
    g.add_argument("--max-dim", type=int, default=65536, help="largest code allowed with --pool none (default: %(default)s)")
    r = _add_running_options(p)
    r.add_argument("--part-size", type=int, default=None,
                   help="images per part file; a killed run recomputes at most one part (default: 512)")
    r.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored code type")


def _add_classify_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier training")
    g.add_argument("--normalize", default="power", choices=("none", "standard", "l2", "power"),
                   help="code preprocessing: power = signed square root then L2 (default: %(default)s)")
    g.add_argument("--C", type=float, default=None, help="fix C instead of choosing it by cross-validation")
    g.add_argument("--cv", type=int, default=5, help="cross-validation folds; 0 fits once with --C (default: 5)")
    g.add_argument("--class-weight", default="balanced",
                   help="balanced, none, or CLASS=W,CLASS=W (cost-based imbalance handling) (default: %(default)s)")
    g.add_argument("--sampling", default="none", choices=("none", "over", "under", "hybrid"),
                   help="resample the training split: over / under to the largest / smallest class, hybrid to "
                        "the median class size (default: %(default)s)")
    s = p.add_argument_group("evaluation split")
    s.add_argument("--test", metavar="OTHER.h5", help="evaluate on another codes file of the same recipe")
    s.add_argument("--test-fraction", type=float, help="hold out a stratified share of the labeled images")
    s.add_argument("--seed", type=int, default=0, help="seed for the split, folds and sampling (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnncodes",
        description="Transfer learning with CNN codes: extract ReLU'd activations of a frozen ImageNet ConvNet "
                    "once into an HDF5 codes file, then train, compare and evaluate linear SVM / softmax "
                    "classifiers on them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("extract", help="images -> codes file (HDF5)",
                       epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
                       description="Run the backbone over a folder tree (root/CLASS/* or root/{train,val,test}/CLASS/*) "
                                   "or a CSV manifest (path,label[,split]) and write ReLU'd codes to an HDF5 file. "
                                   "A killed run resumes when the same command is run again.")
    p.add_argument("source", help="image folder or CSV manifest")
    p.add_argument("-o", "--out", required=True, help="codes file to write, e.g. codes.h5")
    _add_extract_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing codes file made otherwise")
    p.add_argument("--update", action="store_true", help="extract only new or modified images into an existing file")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any image could not be read")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("info", help="describe a codes file", description="Print a codes file's recipe, counts per "
                       "class and split, and its failed images.")
    p.add_argument("codes", help="codes file (HDF5)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("layers", help="list the tappable layers of a backbone",
                       description="List layers with output shapes and aliases. Without --all, only layers whose "
                                   "outputs are non-negative (after a ReLU), which are valid CNN codes.")
    p.add_argument("model", help="backbone name, e.g. mobilenet_v2, alexnet, vgg16, resnet18, resnet50")
    p.add_argument("--all", action="store_true", help="list every graph node, including pre-activation ones")
    p.add_argument("--crop", type=int, default=224, help="input size used to compute shapes (default: %(default)s)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("classify", help="codes file -> trained model and report",
                       description="Train a linear SVM or softmax classifier on cached codes (no ConvNet forward pass), "
                                   "choose C by stratified cross-validation, evaluate on held-out images and write "
                                   "report.json, report.txt, confusion.csv, confusion.png and model.joblib to RUN_DIR.")
    p.add_argument("codes", help="codes file made by `cnncodes extract`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the model and reports")
    p.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                   help="tap to train on (default: the file's first); repeat to concatenate taps")
    p.add_argument("--classifier", default="svm", choices=("svm", "softmax", "knn", "rbf_svm", "forest"),
                   help="svm = linear SVM, softmax = multinomial logistic regression (default: %(default)s)")
    _add_classify_options(p)
    p.add_argument("--max-memory", metavar="SIZE", help="memory budget, e.g. 2G or 512M; codes over it are streamed "
                   "from the file and fitted by SGD (svm, softmax) (default: a quarter of RAM)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("compare", help="rank classifiers x layers on the same codes",
                       description="Run every classifier on every layer of one codes file and write compare.md and "
                                   "compare.csv (balanced accuracy, macro-F1, accuracy, fit time), best first.")
    p.add_argument("codes", help="codes file made by `cnncodes extract`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the table and one report per run")
    p.add_argument("--classifiers", default="svm,softmax,knn,rbf_svm",
                   help="comma-separated: svm, softmax, knn, rbf_svm, forest (default: %(default)s)")
    p.add_argument("--layers", help="comma-separated taps, a+b to concatenate (default: every tap of the file)")
    _add_classify_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="label new images with a trained model",
                       epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
                       description="Extract new images with exactly the model's recipe and write a CSV: path, "
                                   "predicted, one score column per class, error. Unreadable images are listed, "
                                   "not fatal. IMAGES may also be a codes file of the same recipe.")
    p.add_argument("run_dir", help="RUN_DIR written by `cnncodes classify` (or its model.joblib)")
    p.add_argument("images", help="image folder, CSV manifest or codes file")
    p.add_argument("-o", "--out", required=True, help="CSV file to write")
    p.add_argument("--codes-out", help="keep the extracted codes in this file")
    p.add_argument("--weights", help="checkpoint file, when the model's weights are not found the usual way")
    _add_running_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="extract, then classify (or compare several layers)",
                       epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
                       description="Extract IMAGES into OUT/codes.h5, then classify into OUT/classify/ (one layer) "
                                   "or compare classifiers x layers into OUT/compare/ (several --layer).")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--out", required=True, help="folder for codes.h5 and the reports")
    _add_extract_options(p)
    p.add_argument("--classifiers", default="svm,softmax",
                   help="classifier for one layer, comma-separated ones to compare (default: %(default)s)")
    _add_classify_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("dataset", help="write a built-in dataset as an image folder tree",
                       description="Write a real dataset that ships with scikit-learn as PNG files, offline.")
    p.add_argument("name", choices=("digits",), help="digits: 1,797 handwritten digit scans (8x8), 10 classes")
    p.add_argument("folder", help="where to write it, e.g. data/digits")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share put under test/ (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_dataset)
    return parser


def _extract_kwargs(args: argparse.Namespace) -> dict:
    return dict(backbone=args.backbone, layers=tuple(args.layers or ("penultimate",)), pool=args.pool,
                weights=args.weights, device=args.device, precision=args.precision, batch_size=args.batch_size,
                workers=args.workers, part_size=args.part_size, resize=args.resize, crop=args.crop, dtype=args.dtype,
                progress=not args.quiet, max_dim=args.max_dim)


def cmd_extract(args: argparse.Namespace) -> int:
    from extract import extract_codes

    result = extract_codes(args.source, args.out, overwrite=args.overwrite, update=args.update, **_extract_kwargs(args))
    _print_extract_summary(result)
    return EXIT_FAILURES if (args.strict and result.failures) else EXIT_OK


def _print_extract_summary(result) -> None:
    for note in result.notes:
        print(f"note: {note}")
    if result.up_to_date:
        print(f"{result.path} is up to date: {result.n_images} images, nothing to extract")
    else:
        resumed = f", resumed from {result.resumed_parts} saved part(s)" if result.resumed_parts else ""
        print(f"wrote {result.path}: {result.n_images} images, {result.n_extracted} extracted in "
              f"{result.seconds:.1f} s ({result.images_per_second:.1f} images/s){resumed}")
    if result.failures:
        print(f"{len(result.failures)} image(s) could not be read (ok=false in the file, codes NaN):")
        for path, reason in result.failures[:MAX_LISTED_FAILURES]:
            print(f"  {path}: {reason}")
        if len(result.failures) > MAX_LISTED_FAILURES:
            print(f"  ... and {len(result.failures) - MAX_LISTED_FAILURES} more: see `cnncodes info {result.path}`")


def cmd_info(args: argparse.Namespace) -> int:
    from extract import open_codes

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
          f"mean {prep.get('mean')}, std {prep.get('std')}")
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


def cmd_layers(args: argparse.Namespace) -> int:
    from extract.backbones import get_backbone
    from extract.taps import describe_layers
    from extract.weights import RANDOM, WeightsInfo, build_model

    backbone = get_backbone(args.model)
    model = build_model(backbone, WeightsInfo(RANDOM, RANDOM, ""))  # shapes do not depend on the weights
    rows = describe_layers(backbone, model, args.crop, show_all=args.all)
    print(f"{backbone.name}: tappable layers for a {args.crop}x{args.crop} input "
          f"({'all nodes' if args.all else 'non-negative outputs only; --all for every node'})")
    print(f"{'node':<28} {'output shape':<16} {'code dim':>8}  {'ReLU':<4}  aliases")
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        print(f"{row['node']:<28} {shape:<16} {row['dim']:>8}  {'yes' if row['relu'] else 'no':<4}  "
              f"{', '.join(row['aliases'])}")
    return EXIT_OK


def _classify_kwargs(args: argparse.Namespace) -> dict:
    return dict(normalize=args.normalize, C=args.C, cv=args.cv, class_weight=args.class_weight, sampling=args.sampling,
                test=args.test, test_fraction=args.test_fraction, seed=args.seed, progress=not args.quiet)


def cmd_classify(args: argparse.Namespace) -> int:
    from classify import classify_codes, summarize

    report = classify_codes(args.codes, args.out, layers=args.layers, classifier=args.classifier,
                            max_memory=args.max_memory, **_classify_kwargs(args))
    _print_report(report, Path(args.out))
    print(summarize(report))
    return EXIT_OK


def _print_report(report: dict, out: Path) -> None:
    print((out / "report.txt").read_text(encoding="utf-8"))
    if report.get("n_failed_excluded"):
        print(f"{report['n_failed_excluded']} image(s) excluded because they could not be read")
    print(f"reports and model in {out}/: report.json report.txt confusion.csv confusion.png model.joblib")


def cmd_compare(args: argparse.Namespace) -> int:
    from classify import compare

    layers = args.layers.split(",") if args.layers else None
    compare(args.codes, args.out, classifiers=_split(args.classifiers), layers=layers, **_classify_kwargs(args))
    print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
    print(f"table in {args.out}/compare.md and compare.csv; one report folder per run")
    return EXIT_OK


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    from classify.predict import predict_images

    result = predict_images(args.run_dir, args.images, args.out, codes_out=args.codes_out, weights=args.weights,
                            device=args.device, precision=args.precision, batch_size=args.batch_size,
                            workers=args.workers, progress=not args.quiet)
    counts = ", ".join(f"{name}: {n}" for name, n in sorted(result["predicted_counts"].items()))
    print(f"wrote {result['out_csv']}: {result['n_predicted']} of {result['n_rows']} images predicted ({counts})")
    if result["n_failed"]:
        print(f"{result['n_failed']} image(s) could not be predicted (listed in the CSV's error column):")
        for path, reason in result.get("failures", [])[:MAX_LISTED_FAILURES]:
            print(f"  {path}: {reason}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from classify import classify_codes, compare, summarize
    from extract import extract_codes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes = out / "codes.h5"
    result = extract_codes(args.images, codes, **_extract_kwargs(args))
    _print_extract_summary(result)
    layers = list(args.layers or ["penultimate"])
    classifiers = _split(args.classifiers)
    if len(layers) == 1 and len(classifiers) == 1:
        report = classify_codes(codes, out / "classify", layers=layers, classifier=classifiers[0],
                                **_classify_kwargs(args))
        _print_report(report, out / "classify")
        print(summarize(report))
        return EXIT_OK
    rows = compare(codes, out / "compare", classifiers=classifiers, layers=layers, **_classify_kwargs(args))
    print((out / "compare" / "compare.md").read_text(encoding="utf-8"))
    best = rows[0]
    best_report = out / "compare" / best["report_dir"] / "report.txt"
    print(f"best: {best['classifier']} on {best['layers']} (balanced accuracy {best['balanced_accuracy']:.3f}); "
          f"its report, {best_report}:\n")
    print(best_report.read_text(encoding="utf-8"))
    return EXIT_OK


def cmd_dataset(args: argparse.Namespace) -> int:
    from extract.datasets import write_digits

    counts = write_digits(Path(args.folder), test_fraction=args.test_fraction, seed=args.seed)
    print(f"wrote {sum(counts.values())} images to {args.folder} "
          f"({', '.join(f'{n} {split}' for split, n in counts.items())})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cnncodes` console script."""
    args = build_parser().parse_args(argv)
    from extract import ExtractionError, ExtractionInterrupted, WeightsNotFound

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
    except (ExtractionError, WeightsNotFound, ValueError, KeyError, FileNotFoundError, PermissionError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cnncodes {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"cnncodes {args.command}: error: {err} (nothing was overwritten)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
