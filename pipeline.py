"""cnncodes command line: argument parsing, progress and exit codes; the work is in extract/ and classify/."""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_HERE = Path(__file__).resolve().parent
OWN_CODE = {_HERE / "extract", _HERE / "classify", _HERE / "finetune", _HERE / "advise", _HERE}  # see is_usage_error
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


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "0 or a positive integer")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
fraction = _number(float, lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)")
cv_folds = _number(int, lambda v: v == 0 or v >= 2, "0 (no cross-validation) or at least 2 folds")


def shard_of(text: str) -> tuple[int, int]:
    """--shard R/N -> (R, N), refused in one line unless 0 <= R < N."""
    rank, sep, count = text.partition("/")
    try:
        r, n = int(rank), int(count)
    except ValueError:
        r, n = -1, 0
    if not sep or not 0 <= r < n:
        raise argparse.ArgumentTypeError(f"must be R/N with 0 <= R < N (shard R of N), got {text!r}")
    return r, n


class _KeepsEnvironmentHelp(argparse.HelpFormatter):
    """Wraps descriptions as usual, but prints the environment table as it is laid out."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return text if text == ENVIRONMENT_HELP else super()._fill_text(text, width, indent)


def _add_running_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision, recorded in the codes file; auto = bf16 on CPUs with native bf16 "
                        "(AMX, AVX512-BF16), else fp32; bf16/fp16 on GPUs")
    r.add_argument("--batch-size", type=positive_int, default=None, help="images per forward pass (default: 4 on CPU, where small batches are fastest; 64 on GPU)")
    r.add_argument("--workers", type=non_negative_int, default=None,
                   help="image decoding processes; the main process runs the network (on the CPU: OpenVINO, "
                        "one single-threaded stream per CPU) (default: one per CPU, at most 16; on a GPU CPUs - 1). "
                        "0: decode in the main process")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return r


COLUMN_KWARGS = ("path_column", "label_column", "split_column")


def _add_column_options(p: argparse.ArgumentParser) -> None:
    """--path-column, --label-column, --split-column: which header column of a CSV manifest is which."""
    g = p.add_argument_group("manifest columns", "which header column of a CSV manifest is which, when it "
                             "uses other names than path, label, split (a column not understood is refused "
                             "unless these are given; the columns they leave unnamed are then ignored)")
    for name in COLUMN_KWARGS:
        role = name.split("_")[0]
        g.add_argument(f"--{name.replace('_', '-')}", metavar="NAME", help=f"the manifest's {role} column")


def _column_kwargs(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in COLUMN_KWARGS}


def _add_extract_options(p: argparse.ArgumentParser, with_layer: bool = True) -> None:
    g = p.add_argument_group("backbone and taps")
    g.add_argument("--backbone", "--model", default="mobilenet_v2",
                   help="torchvision backbone: mobilenet_v2 (embedded, works offline), alexnet, vgg16, resnet18, "
                        "resnet50 (default: %(default)s)")
    if with_layer:
        g.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                       help="layer to tap: an alias (penultimate, fc6, fc7, block1..., see `cnncodes layers MODEL`) "
                            "or a torchvision node name; repeat (or a,b) to tap several layers in one forward pass. "
                            "In `run`, each --layer (or comma-separated entry) is one run and a+b concatenates "
                            "taps (default: penultimate)")
    g.add_argument("--pool", default="avg", choices=("avg", "max", "none"),
                   help="how conv maps become vectors: global average, global max, or none (whole map, "
                        "guarded by --max-dim) (default: %(default)s)")
    g.add_argument("--weights", metavar="FILE|random",
                   help="checkpoint file to load (weights_only); 'random' for an untrained network (tests). Default: "
                        "the embedded checkpoint, then the torch hub cache, then a download")
    g.add_argument("--resize", type=positive_int, help="shorter side before the crop (default: the backbone's, 256)")
    g.add_argument("--crop", type=positive_int, help="center crop size (default: the backbone's, 224)")
    g.add_argument("--max-dim", type=positive_int, default=65536, help="largest code allowed with --pool none (default: %(default)s)")
    r = _add_running_options(p)
    r.add_argument("--part-size", type=positive_int, default=None,
                   help="images per part file; a killed run recomputes at most one part (default: 512)")
    r.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored code type")


SAMPLINGS = ("none", "over", "under", "hybrid")


def _sampling_list(text: str) -> str:
    """--sampling of compare / run: one mode or several, comma-separated, to compare."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in SAMPLINGS]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"must be {', '.join(SAMPLINGS)} or several of them comma-separated, "
                                         f"got {text!r}")
    return ",".join(modes)


def _add_classify_options(p: argparse.ArgumentParser, several_samplings: bool = False) -> None:
    g = p.add_argument_group("classifier training")
    g.add_argument("--normalize", default="power", choices=("none", "standard", "l2", "power"),
                   help="code preprocessing: power = signed square root then L2 (default: %(default)s)")
    g.add_argument("--C", type=positive_float, default=None, help="fix C instead of choosing it by cross-validation")
    g.add_argument("--cv", type=cv_folds, default=5,
                   help="cross-validation folds (at least 2); 0 fits once with --C, or without it with the "
                        "classifier's default (C=1) (default: 5)")
    g.add_argument("--max-iter", type=int, metavar="N",
                   help="iteration limit of the svm / softmax / rbf_svm solver, when a fit reports that it did not "
                        "converge (default: the classifier's, 1000 Newton steps for svm, 5000 for softmax)")
    g.add_argument("--class-weight", default="balanced",
                   help="balanced, none, or CLASS=W,CLASS=W (cost-based imbalance handling) (default: %(default)s)")
    sampling_help = ("resample the training split: over / under to the largest / smallest class, hybrid to "
                     "the median class size")
    if several_samplings:
        g.add_argument("--sampling", default="none", type=_sampling_list, metavar="{none,over,under,hybrid}[,...]",
                       help=sampling_help + "; several, comma-separated, are compared (default: %(default)s)")
    else:
        g.add_argument("--sampling", default="none", choices=SAMPLINGS, help=sampling_help + " (default: %(default)s)")
    g.add_argument("--max-memory", metavar="SIZE", help="memory budget, e.g. 2G or 512M; codes over it are streamed "
                   "from the file and fitted by SGD (svm, softmax only) (default: a quarter of RAM)")
    s = p.add_argument_group("evaluation split")
    s.add_argument("--test", metavar="OTHER.h5", help="evaluate on another codes file of the same recipe")
    s.add_argument("--test-fraction", type=fraction, help="hold out a stratified share of the labeled images")
    s.add_argument("--seed", type=int, default=0, help="seed for the split, folds and sampling (default: 0)")


def package_version() -> str:
    """The installed cnncodes version (without importing extract, which loads torch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnncodes")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.1.0"


def _show_warning(command: str):
    """Warnings as one line each, ``cnncodes CMD: warning: ...``, without source paths (above any progress bar)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from tqdm import tqdm

        tqdm.write(f"cnncodes {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnncodes",
        description="Transfer learning with CNN codes: extract ReLU'd activations of a frozen ImageNet ConvNet "
                    "once into an HDF5 codes file, then train, compare and evaluate linear SVM / softmax "
                    "classifiers on them.")
    parser.add_argument("--version", action="version", version=f"cnncodes {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("extract", help="images -> codes file (HDF5)",
                       epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
                       description="Run the backbone over a folder tree (root/CLASS/* or root/{train,val,test}/CLASS/*) "
                                   "a CSV manifest (path,label[,split]), or image files and folders, and write "
                                   "ReLU'd codes to an HDF5 file. "
                                   "A killed run resumes when the same command is run again.")
    p.add_argument("source", nargs="+", metavar="SOURCE",
                   help="image folder, CSV manifest (.csv, .tsv, .txt), or image files and folders (several: one "
                        "collection under their common folder; each folder labelled as it would be alone, image "
                        "files unlabeled)")
    p.add_argument("-o", "--out", required=True, help="codes file to write, e.g. codes.h5")
    _add_extract_options(p)
    _add_column_options(p)
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
    p.add_argument("--crop", type=positive_int, default=224, help="input size used to compute shapes (default: %(default)s)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("classify", help="codes file -> trained model and report",
                       description="Train a linear SVM or softmax classifier on cached codes (no ConvNet forward pass), "
                                   "choose C by stratified cross-validation, evaluate on held-out images and write "
                                   "report.json, report.txt, confusion.csv, confusion.png and model.joblib to RUN_DIR.")
    p.add_argument("codes", help="codes file made by `cnncodes extract`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the model and reports")
    p.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                   help="tap to train on (default: the file's first); a+b, or --layer repeated, concatenates "
                        "taps into one code")
    p.add_argument("--classifier", default="svm", choices=("svm", "softmax", "knn", "rbf_svm", "forest"),
                   help="svm = linear SVM, softmax = multinomial logistic regression (default: %(default)s)")
    _add_classify_options(p)
    p.add_argument("--calibrate", action="store_true",
                   help="give svm / rbf_svm probabilities (prob_<class> columns in predict) by sigmoid calibration "
                        "on folds of the training split; softmax, knn and forest have them already")
    p.add_argument("--positive", metavar="CLASS",
                   help="two classes: the positive class of sensitivity, ROC and precision-recall "
                        "(default: the second class name)")
    p.add_argument("--overwrite", action="store_true", help="replace the model already in RUN_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("compare", help="rank classifiers x layers on the same codes",
                       description="Run every classifier on every layer of one codes file and write compare.md and "
                                   "compare.csv, ranked by cross-validated balanced accuracy on the training split; "
                                   "held-out balanced accuracy, macro-F1 and accuracy are reported for every row, "
                                   "never used to rank.")
    p.add_argument("codes", help="codes file made by `cnncodes extract`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the table and one report per run")
    p.add_argument("--classifiers", default="svm,softmax,knn,rbf_svm",
                   help="comma-separated: svm, softmax, knn, rbf_svm, forest (default: %(default)s)")
    p.add_argument("--layers", help="runs separated by commas, a+b concatenates taps, spaces ignored, e.g. "
                                    "\"block4, block4+penultimate\" (default: every tap of the file, one at a time)")
    _add_classify_options(p, several_samplings=True)
    p.add_argument("--overwrite", action="store_true", help="replace the table and per-run models already in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="label new images with a trained model",
                       epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
                       description="Extract new images with exactly the model's recipe and write a CSV: path, "
                                   "predicted, true (labelled images), one score_ column per class, prob_ columns "
                                   "where the model gives probabilities, error. On labelled images it prints "
                                   "accuracy and balanced accuracy. Unreadable images are listed, not fatal. "
                                   "IMAGES may also be a codes file of the same recipe.")
    p.add_argument("run_dir", help="RUN_DIR written by `cnncodes classify` or `cnncodes finetune` (or its model file)")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image folder, CSV manifest, codes file, or image files and folders (several: one "
                        "collection, as for extract)")
    p.add_argument("-o", "--out", required=True, help="CSV file to write")
    p.add_argument("--codes-out", help="keep the extracted codes in this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (never a file of RUN_DIR)")
    p.add_argument("--weights", help="checkpoint file, when the model's weights are not found the usual way")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="two-class models: predict the positive class when its probability (prob_<class>; else its "
                        "decision score) is at least T, instead of the most likely class")
    p.add_argument("--positive", metavar="CLASS", help="the class --threshold applies to (default: the second class)")
    _add_running_options(p)
    _add_column_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="extract, then classify (or compare several layers)",
                       epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
                       description="Extract IMAGES into OUT/codes.h5, then classify into OUT/classify/ (one layer) "
                                   "or compare classifiers x layers into OUT/compare/ (several --layer).")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--out", required=True, help="folder for codes.h5 and the reports")
    _add_extract_options(p)
    _add_column_options(p)
    p.add_argument("--classifiers", default="svm,softmax",
                   help="classifier for one layer, comma-separated ones to compare (default: %(default)s)")
    p.add_argument("--update", action="store_true",
                   help="extract only new or modified images into OUT/codes.h5 (after images were added)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/codes.h5 when it was made otherwise (another recipe or image set)")
    _add_classify_options(p, several_samplings=True)
    p.set_defaults(func=cmd_run)

    _add_finetune_parser(sub)
    _add_advise_parser(sub)
    from advise import auto_cli  # auto registers its own command
    auto_cli.add_parsers(sub)

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
    return parser


def _layer_runs(values: list[str] | None) -> list[list[str]]:
    """--layer values as runs: commas separate runs, + concatenates taps (spaces ignored)."""
    from classify.data import parse_layer_sets

    return [run for value in (values or ["penultimate"]) for run in parse_layer_sets(value)]


def _tap_names(values: list[str] | None) -> tuple[str, ...]:
    """Every tap named in --layer values (a,b and a+b name two), once each, in order: what one forward pass
    must extract. Split here rather than by classify.data, whose import would load scikit-learn for extract."""
    names = (t.strip() for value in (values or ["penultimate"]) for t in value.replace("+", ",").split(","))
    return tuple(dict.fromkeys(t for t in names if t))


def _add_finetune_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the backbone with a new head (images -> network + report)",
        epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
        description="Train part or all of the backbone with a new linear head on IMAGES (a folder tree root/CLASS/* "
                    "or root/{train,val,test}/CLASS/*, or a CSV manifest) and write into RUN_DIR the same reports "
                    "as classify (report.json, report.txt, confusion.csv/.png), finetuned.pt (for `cnncodes predict "
                    "RUN_DIR`), backbone.pth (for `cnncodes extract --weights RUN_DIR/backbone.pth`), epochs.jsonl "
                    "and learning_curve.png. The test split (else val) is only evaluated; the epoch is chosen on a "
                    "validation set (the val split when a test split exists too, else a stratified share of "
                    "train). Each epoch is checkpointed: after Ctrl-C or a kill, the same command resumes.")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the network, reports and checkpoint")
    g = p.add_argument_group("network")
    g.add_argument("--backbone", "--model", default="mobilenet_v2",
                   help="torchvision backbone: mobilenet_v2 (embedded), alexnet, vgg16, resnet18, resnet50 "
                        "(default: %(default)s)")
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
    g.add_argument("--resize", type=positive_int, help="shorter side before the crop (default: the backbone's, 256)")
    g.add_argument("--crop", type=positive_int, help="training and evaluation crop size (default: the backbone's, 224)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs (default: %(default)s)")
    t.add_argument("--lp-epochs", type=int, default=0,
                   help="LP-FT: epochs training the head alone before the fine-tuning epochs (default: 0)")
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=0.01,
                   help="head learning rate (default: %(default)s for SGD; use about 0.001 with adamw)")
    t.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="backbone learning rate = lr x this (default: %(default)s): pretrained weights move slowly")
    t.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="SGD with momentum or AdamW "
                   "(default: %(default)s)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    t.add_argument("--weight-decay", type=float, default=1e-4,
                   help="on weights, not on biases or BatchNorm (default: %(default)s)")
    t.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up, then cosine decay to 0 (default: %(default)s)")
    t.add_argument("--label-smoothing", type=float, default=0.1, help="(default: %(default)s)")
    t.add_argument("--class-weight", default="balanced",
                   help="loss weights: balanced, none, or CLASS=W,CLASS=W (default: %(default)s)")
    t.add_argument("--sampling", default="none", choices=("none", "over", "under"),
                   help="class-balanced draws per epoch: over to the largest class, under to the smallest "
                        "(default: %(default)s)")
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random resized crop + flip (on by default)")
    t.add_argument("--patience", type=int, help="stop when the validation score has not improved for this many "
                   "epochs (default: run every epoch, keep the best)")
    s = p.add_argument_group("data splits")
    s.add_argument("--val-fraction", type=float, default=0.15,
                   help="stratified share of train that chooses the epoch, when there is no val split besides a "
                        "test split; 0 keeps the last epoch (default: %(default)s)")
    s.add_argument("--test-fraction", type=float, help="hold out a stratified share for evaluation instead of the "
                   "split folders (default: the test split, else val, else 0.25)")
    s.add_argument("--max-train-images", type=int, help="train on a stratified sample of at most this many images")
    s.add_argument("--seed", type=int, default=0, help="seed for splits, initialization, order and augmentation")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    r.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto = mixed precision on CUDA (bf16, else fp16 with loss scaling), fp32 on the CPU")
    r.add_argument("--threads", type=positive_int, help="training threads (default: every CPU)")
    r.add_argument("--workers", type=non_negative_int, help="decoding processes for the one-time image cache (default: every CPU)")
    r.add_argument("--overwrite", action="store_true", help="start again instead of resuming RUN_DIR's checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_column_options(p)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from finetune.options import check_options

    options = dict(
        backbone=args.backbone, weights=args.weights,
        freeze=1 / 3 if args.freeze is None and args.freeze_until is None else args.freeze,
        freeze_until=args.freeze_until, epochs=args.epochs, lp_epochs=args.lp_epochs, batch_size=args.batch_size,
        lr=args.lr, backbone_lr_mult=args.backbone_lr_mult, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, optimizer=args.optimizer,
        momentum=args.momentum, class_weight=args.class_weight, sampling=args.sampling, train_bn=args.train_bn,
        augment=args.augment, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        patience=args.patience, seed=args.seed, device=args.device, precision=args.precision,
        threads=args.threads, workers=args.workers, progress=not args.quiet, resize=args.resize, crop=args.crop,
        max_train_images=args.max_train_images, overwrite=args.overwrite)
    check_options(options)  # before torch loads: a bad value fails at once
    from classify.report import summarize
    from finetune import FinetuneInterrupted, finetune_images

    try:
        report = finetune_images(args.images, args.out, **options, **_column_kwargs(args))
    except FinetuneInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    out = Path(args.out)
    print((out / "report.txt").read_text(encoding="utf-8"))
    print(f"written to {out}/: report.json report.txt confusion.csv confusion.png finetuned.pt backbone.pth "
          "epochs.jsonl learning_curve.png checkpoint.pt")
    print(summarize(report))
    return EXIT_OK


def _add_advise_parser(sub) -> None:
    p = sub.add_parser(
        "advise", help="which transfer-learning scenario (1-4) fits IMAGES, and the commands to run",
        epilog=ENVIRONMENT_HELP, formatter_class=_KeepsEnvironmentHelp,
        description="Measure the training images' size (images per class, imbalance) and similarity to ImageNet "
                    "(one backbone pass over a stratified sample: the ImageNet head's entropy and LEEP on the "
                    "labels, and cross-validated linear probes of the top and earlier layers), map them to the "
                    "notes' scenario 1-4 (small/large x similar/different) and print the recommended commands "
                    "with the figures behind them. Training data only: test/ and val/ are never used when "
                    "train/ exists.")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--sample", type=int, default=500,
                   help="training images for the similarity pass, stratified by class (default: %(default)s)")
    p.add_argument("--try", dest="try_options", action="store_true",
                   help="also score the most plausible options side by side: the linear probes, and a 3-epoch "
                        "fine-tune on at most --sample images, validated on a share of the training images")
    p.add_argument("--out", metavar="DIR", help="keep advice.json, advice.txt and the --try fine-tune here")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a DIR that holds files already (its advice files are replaced)")
    p.add_argument("--json", action="store_true", help="print the advice as JSON (for scripts)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sample, folds and fine-tune (default: 0)")
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", "--model", default="mobilenet_v2",
                   help="torchvision backbone: mobilenet_v2 (embedded), alexnet, vgg16, resnet18, resnet50 "
                        "(default: %(default)s)")
    g.add_argument("--weights", metavar="FILE|random", help="checkpoint (default: found as for extract)")
    g.add_argument("--resize", type=positive_int, help="shorter side before the crop (default: the backbone's, 256)")
    g.add_argument("--crop", type=positive_int, help="center crop size (default: the backbone's, 224)")
    _add_running_options(p)
    _add_column_options(p)
    p.set_defaults(func=cmd_advise)


def cmd_advise(args: argparse.Namespace) -> int:
    import json

    from advise import advise_images, format_advice

    advice = advise_images(args.images, backbone=args.backbone, weights=args.weights, sample=args.sample,
                           seed=args.seed, resize=args.resize, crop=args.crop, device=args.device,
                           precision=args.precision, batch_size=args.batch_size, workers=args.workers, try_options=args.try_options,
                           out_dir=args.out, progress=not args.quiet, overwrite=args.overwrite, **_column_kwargs(args))
    print(json.dumps(advice, indent=2) if args.json else format_advice(advice))
    return EXIT_OK


def _extract_kwargs(args: argparse.Namespace) -> dict:
    return dict(backbone=args.backbone, layers=_tap_names(args.layers), pool=args.pool,
                weights=args.weights, device=args.device, precision=args.precision, batch_size=args.batch_size,
                workers=args.workers, part_size=args.part_size, resize=args.resize, crop=args.crop, dtype=args.dtype,
                progress=not args.quiet, max_dim=args.max_dim, **_column_kwargs(args))


def _check_preprocess(args: argparse.Namespace) -> None:
    """--resize below --crop (given, or the backbone's default) would not fit the crop: refuse it up front."""
    from extract.backbones import get_backbone
    from extract.recipe import preprocess_config

    prep = preprocess_config(get_backbone(args.backbone), args.resize, args.crop)
    if prep["resize"] < prep["crop"]:
        raise ValueError(f"--resize {prep['resize']} is smaller than --crop {prep['crop']}: the center crop must "
                         "fit in the resized image (use --resize >= --crop)")


def cmd_extract(args: argparse.Namespace) -> int:
    from extract import extract_codes
    from extract.shards import resolve

    _check_preprocess(args)
    if Path(args.out).is_dir():
        raise ValueError(f"-o {args.out} is a folder; -o names the codes file to write, e.g. -o codes.h5")
    result = extract_codes(_one_or_list(args.source), args.out, overwrite=args.overwrite, update=args.update,
                           shard=resolve(args.shard, os.environ), **_extract_kwargs(args))
    _print_extract_summary(result)
    if result.missing_parts:
        earlier = f" ({result.resumed_parts} by an earlier run)" if result.resumed_parts else ""
        print(f"shard {result.shard} done: its {result.shard_parts} of the {result.n_parts} parts are saved{earlier}; "
              f"{len(result.missing_parts)} part(s) of other shards are missing: {result.path} is assembled when the "
              f"last shard finishes, or by `cnncodes assemble {result.path}`")
        return EXIT_OK
    if _none_usable(result, "extract"):
        return EXIT_FAILURES
    return EXIT_FAILURES if (args.strict and result.failures) else EXIT_OK


def cmd_assemble(args: argparse.Namespace) -> int:
    from extract.shards import assemble_codes

    print(f"wrote {args.out}" if assemble_codes(args.out) else f"{args.out} is complete: nothing to assemble")
    return EXIT_OK


def _none_usable(result, command: str) -> bool:
    """True, with one error line, when not a single image of the collection could be read."""
    if not result.n_images or len(result.failures) < result.n_images:
        return False
    path, reason = result.failures[0]
    print(f"cnncodes {command}: error: none of the {result.n_images} image(s) could be read (first: {path}: "
          f"{reason}); {result.path} holds no usable codes", file=sys.stderr)
    return True


def _one_or_list(paths: list[str]) -> str | list[str]:
    """One path as is, several as the list list_images reads as one collection."""
    return paths[0] if len(paths) == 1 else paths


def _print_extract_summary(result) -> None:
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


def cmd_export(args: argparse.Namespace) -> int:
    from extract.export import export_codes

    out = export_codes(args.codes, args.out, to=args.to, ok_only=args.ok_only, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to})")
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
                test=args.test, test_fraction=args.test_fraction, seed=args.seed, progress=not args.quiet,
                max_iter=args.max_iter, max_memory=args.max_memory)


def cmd_classify(args: argparse.Namespace) -> int:
    from classify import classify_codes, summarize

    report = classify_codes(args.codes, args.out, layers=args.layers, classifier=args.classifier,
                            calibrate=args.calibrate, positive=args.positive, overwrite=args.overwrite,
                            **_classify_kwargs(args))
    _print_report(report, Path(args.out))
    print(summarize(report))
    return EXIT_OK


def _print_report(report: dict, out: Path) -> None:
    print((out / "report.txt").read_text(encoding="utf-8"))
    if report.get("n_failed_excluded"):
        print(f"{report['n_failed_excluded']} image(s) excluded because they could not be read")
    curves = " pr_curve.png roc.png" if (report.get("binary") or {}).get("pr_curve") else ""
    print(f"reports and model in {out}/: report.json report.txt confusion.csv confusion.png{curves} model.joblib")


def cmd_compare(args: argparse.Namespace) -> int:
    from classify import compare

    rows = compare(args.codes, args.out, classifiers=_split(args.classifiers), layers=args.layers,
                   overwrite=args.overwrite, **_classify_kwargs(args))
    print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
    _print_pick(rows, Path(args.out))
    print(f"table in {args.out}/compare.md and compare.csv; one report folder per run")
    return EXIT_OK


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    from classify.runs import predict_run

    result = predict_run(args.run_dir, _one_or_list(args.images), args.out, codes_out=args.codes_out,
                         weights=args.weights, threshold=args.threshold, positive=args.positive,
                         device=args.device, precision=args.precision, batch_size=args.batch_size,
                         workers=args.workers, progress=not args.quiet, overwrite=args.overwrite,
                         **_column_kwargs(args))
    counts = ", ".join(f"{name}: {n}" for name, n in sorted(result["predicted_counts"].items()))
    print(f"wrote {result['out_csv']}: {result['n_predicted']} of {result['n_rows']} images predicted ({counts})")
    if result.get("threshold"):
        t = result["threshold"]
        print(f"threshold: {t['positive_class']} where {t['on']} >= {t['threshold']:g}")
    _print_evaluation(result.get("evaluation"))
    if result["n_failed"]:
        print(f"{result['n_failed']} image(s) could not be predicted (listed in the CSV's error column):")
        for path, reason in result.get("failures", [])[:MAX_LISTED_FAILURES]:
            print(f"  {path}: {reason}")
    if result["n_rows"] and not result["n_predicted"]:
        print(f"cnncodes predict: error: none of the {result['n_rows']} image(s) could be predicted (see the list "
              f"above and the error column of {result['out_csv']})", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def _print_evaluation(evaluation: dict | None) -> None:
    """Accuracy of a prediction on labelled images (labels the model does not know are named, not scored)."""
    if not evaluation:
        return
    unknown = ", ".join(f"{name} ({n})" for name, n in sorted(evaluation["unknown_labels"].items()))
    if evaluation["n_evaluated"]:
        print(f"against the true labels ({evaluation['n_evaluated']} labelled images of classes the model knows): "
              f"accuracy {evaluation['accuracy']:.4f}, balanced accuracy {evaluation['balanced_accuracy']:.4f}")
    if unknown:
        print(f"labels the model does not know, not scored: {unknown}")


def cmd_run(args: argparse.Namespace) -> int:
    from classify.data import require_two_classes
    from classify.stream import parse_size
    from classify.train import check_options
    from extract.outputs import claim_output
    from extract.reader import list_images

    layers, classifiers = _layer_runs(args.layers), _split(args.classifiers)
    if not classifiers:
        raise ValueError("--classifiers names no classifier")
    samplings = args.sampling.split(",")
    for name in classifiers:  # before the long extraction, not after it
        for mode in samplings:
            check_options(name, args.normalize, mode)
    if args.max_memory is not None:
        parse_size(args.max_memory)
    listing = list_images(args.images, **_column_kwargs(args))  # the class count, before torch loads and the long extraction
    require_two_classes(listing.labels, listing.class_names, args.images)
    _check_preprocess(args)
    with claim_output(args.out, images=args.images, overwrite=args.overwrite,
                      resumes=lambda out: any(out.glob("codes.h5*"))) as out:  # a rerun updates its own folder
        return _run_into(out, args, layers, classifiers, samplings)


def _run_into(out: Path, args: argparse.Namespace, layers: list[list[str]], classifiers: list[str],
              samplings: list[str]) -> int:
    from classify import classify_codes, compare, summarize
    from extract import extract_codes

    codes = out / "codes.h5"
    result = extract_codes(args.images, codes, overwrite=args.overwrite, update=args.update,
                           **_extract_kwargs(args))
    _print_extract_summary(result)
    if _none_usable(result, "run"):
        return EXIT_FAILURES
    if len(layers) == 1 and len(classifiers) == 1 and len(samplings) == 1:
        report = classify_codes(codes, out / "classify", layers=layers[0], classifier=classifiers[0],
                                overwrite=True, **_classify_kwargs(args))  # a rerun of `run` retrains
        _print_report(report, out / "classify")
        print(summarize(report))
        return EXIT_OK
    rows = compare(codes, out / "compare", classifiers=classifiers, layers=layers, overwrite=True,
                   **_classify_kwargs(args))
    print((out / "compare" / "compare.md").read_text(encoding="utf-8"))
    pick_report = _print_pick(rows, out / "compare")
    if pick_report is not None:
        print(f"Its report, {pick_report}:\n")
        print(pick_report.read_text(encoding="utf-8"))
    return EXIT_OK


def _print_pick(rows: list[dict], folder: Path) -> Path | None:
    """Say which row compare's ranking picks (by CV on the training split) and its honest held-out figure;
    return the pick's report.txt, None when nothing was ranked (--cv 0)."""
    pick = rows[0]
    if pick["rank"] is None:
        print("no pick: without cross-validation (--cv 0) no row has a score on the training split, and the "
              "held-out split is not used to choose")
        return None
    sampled = f" with sampling {pick['sampling']}" if len({r["sampling"] for r in rows}) > 1 else ""
    print(f"pick: {pick['classifier']} on {pick['layers']}{sampled} (best CV balanced accuracy on the training "
          f"split, {pick['cv_score']:.3f}); its held-out balanced accuracy, {pick['balanced_accuracy']:.3f}, is the "
          "honest estimate.")
    return folder / pick["report_dir"] / "report.txt"


def cmd_dataset(args: argparse.Namespace) -> int:
    from extract.datasets import write_digits

    counts = write_digits(Path(args.folder), test_fraction=args.test_fraction, seed=args.seed,
                          overwrite=args.overwrite)
    print(f"wrote {sum(counts.values())} images to {args.folder} "
          f"({', '.join(f'{n} {split}' for split, n in counts.items())})")
    return EXIT_OK


def process_settings() -> None:
    """Settings of the whole process, made before torch loads (the benchmarks' children make them too).
    OpenMP threads sleep instead of spinning: spinning threads collapse throughput on a busy machine
    where decoders and the forward pass share the cores (figures in bench/RESULTS.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _weights_errors() -> tuple[type[Exception], ...]:
    """WeightsNotFound, when the weights module is loaded (it imports torch; `info` never loads it)."""
    weights = sys.modules.get("extract.weights")
    return (weights.WeightsNotFound,) if weights else ()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cnncodes` console script."""
    args = build_parser().parse_args(argv)
    process_settings()
    import warnings

    warnings.showwarning = _show_warning(args.command)
    from extract.errors import ExtractionError, ExtractionInterrupted

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
    """Whether ``err`` is the user's mistake (exit 2), not a bug (exit 1): a UsageError, or a ValueError that
    cnncodes' own code raised (its convention for a one-line message about unusable input). A ValueError
    from inside a library, a KeyError, a TypeError... is a bug."""
    from extract.errors import UsageError

    if isinstance(err, UsageError):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_by = Path(tb.tb_frame.f_code.co_filename).resolve() if tb else Path("/")
    return isinstance(err, ValueError) and raised_by.parent in OWN_CODE


def _report_bug(command: str, err: Exception) -> int:
    """One line naming the unexpected exception (a bug) and the file its traceback was written to."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix=f"cnncodes-{command}-", suffix=".traceback.txt")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        traceback.print_exception(err, file=fh)
    first = " ".join(str(err).split())[:300]
    print(f"cnncodes {command}: internal error (a bug, please report it): {type(err).__name__}: {first}; "
          f"traceback in {path}", file=sys.stderr)
    return EXIT_FAILURES


if __name__ == "__main__":
    sys.exit(main())
