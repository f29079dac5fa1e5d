"""The classify stage's commands: classify, compare, predict, and run (extract, then classify or compare)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnncodes.extract.cli import add_extract_options, check_preprocess, extract_kwargs, none_usable, print_extract_summary
from cnncodes.extract.cli_common import (ENVIRONMENT_HELP, EXIT_FAILURES, EXIT_OK, MAX_LISTED_FAILURES,
                                         KeepsEnvironmentHelp, add_column_options, add_running_options, column_kwargs,
                                         cv_folds, fraction, one_or_list, positive_float, split_list)
from cnncodes.extract.errors import UsageError

from .options import CLASSIFIER_NAMES, DEFAULT_CLASSIFIERS, SAMPLING
from .options import ClassifyConfig as C


def add_parsers(sub) -> None:
    """Register classify, compare, predict and run on the ``sub`` subparsers."""
    p = sub.add_parser("classify", help="codes file -> trained model and report",
                       description="Train a linear SVM or softmax classifier on cached codes (no ConvNet forward pass), "
                                   "choose C by stratified cross-validation, evaluate on held-out images and write "
                                   "report.json, report.txt, confusion.csv, confusion.png and model.joblib to RUN_DIR.")
    p.add_argument("codes", help="codes file made by `cnncodes extract`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for the model and reports")
    p.add_argument("--layer", action="append", dest="layers", metavar="LAYER",
                   help="tap to train on (default: the file's first); a+b, or --layer repeated, concatenates "
                        "taps into one code")
    p.add_argument("--classifier", default=C.classifier, choices=CLASSIFIER_NAMES,
                   help="svm = linear SVM, softmax = multinomial logistic regression (default: %(default)s)")
    add_classify_options(p)
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
    p.add_argument("--classifiers", default=",".join(DEFAULT_CLASSIFIERS),
                   help="comma-separated: svm, softmax, knn, rbf_svm, forest (default: %(default)s)")
    p.add_argument("--layers", help="runs separated by commas, a+b concatenates taps, spaces ignored, e.g. "
                                    "\"block4, block4+penultimate\" (default: every tap of the file, one at a time)")
    add_classify_options(p, several_samplings=True)
    p.add_argument("--overwrite", action="store_true", help="replace the table and per-run models already in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="label new images with a trained model",
                       epilog=ENVIRONMENT_HELP, formatter_class=KeepsEnvironmentHelp,
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
    add_running_options(p)
    add_column_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="extract, then classify (or compare several layers)",
                       epilog=ENVIRONMENT_HELP, formatter_class=KeepsEnvironmentHelp,
                       description="Extract IMAGES into OUT/codes.h5, then classify into OUT/classify/ (one layer) "
                                   "or compare classifiers x layers into OUT/compare/ (several --layer).")
    p.add_argument("images", help="image folder or CSV manifest")
    p.add_argument("--out", required=True, help="folder for codes.h5 and the reports")
    add_extract_options(p)
    add_column_options(p)
    p.add_argument("--classifiers", default="svm,softmax",
                   help="classifier for one layer, comma-separated ones to compare (default: %(default)s)")
    p.add_argument("--update", action="store_true",
                   help="extract only new or modified images into OUT/codes.h5 (after images were added)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/codes.h5 when it was made otherwise (another recipe or image set)")
    add_classify_options(p, several_samplings=True)
    p.set_defaults(func=cmd_run)


def _sampling_list(text: str) -> str:
    """--sampling of compare / run: one mode or several, comma-separated, to compare."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in SAMPLING]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"must be {', '.join(SAMPLING)} or several of them comma-separated, "
                                         f"got {text!r}")
    return ",".join(modes)


def add_classify_options(p: argparse.ArgumentParser, several_samplings: bool = False) -> None:
    """The training and evaluation-split options of classify, compare and run (defaults: ClassifyConfig)."""
    g = p.add_argument_group("classifier training")
    g.add_argument("--normalize", default=C.normalize, choices=("none", "standard", "l2", "power"),
                   help="code preprocessing: power = signed square root then L2 (default: %(default)s)")
    g.add_argument("--C", type=positive_float, default=C.C, help="fix C instead of choosing it by cross-validation")
    g.add_argument("--cv", type=cv_folds, default=C.cv,
                   help="cross-validation folds (at least 2); 0 fits once with --C, or without it with the "
                        "classifier's default (C=1) (default: 5)")
    g.add_argument("--max-iter", type=int, metavar="N",
                   help="iteration limit of the svm / softmax / rbf_svm solver, when a fit reports that it did not "
                        "converge (default: the classifier's, 1000 Newton steps for svm, 5000 for softmax)")
    g.add_argument("--class-weight", default=C.class_weight,
                   help="balanced, none, or CLASS=W,CLASS=W (cost-based imbalance handling) (default: %(default)s)")
    sampling_help = ("resample the training split: over / under to the largest / smallest class, hybrid to "
                     "the median class size")
    if several_samplings:
        g.add_argument("--sampling", default=C.sampling, type=_sampling_list, metavar="{none,over,under,hybrid}[,...]",
                       help=sampling_help + "; several, comma-separated, are compared (default: %(default)s)")
    else:
        g.add_argument("--sampling", default=C.sampling, choices=SAMPLING, help=sampling_help + " (default: %(default)s)")
    g.add_argument("--max-memory", metavar="SIZE", help="memory budget, e.g. 2G or 512M; codes over it are streamed "
                   "from the file and fitted by SGD (svm, softmax only) (default: a quarter of RAM)")
    s = p.add_argument_group("evaluation split")
    s.add_argument("--test", metavar="OTHER.h5", help="evaluate on another codes file of the same recipe")
    s.add_argument("--test-fraction", type=fraction, help="hold out a stratified share of the labeled images")
    s.add_argument("--seed", type=int, default=C.seed, help="seed for the split, folds and sampling (default: 0)")


def _layer_runs(values: list[str] | None) -> list[list[str]]:
    """--layer values as runs (``extract.names.layer_runs``)."""
    from cnncodes.extract.names import layer_runs

    return layer_runs(values or ["penultimate"])



def _classify_kwargs(args: argparse.Namespace) -> dict:
    return dict(normalize=args.normalize, C=args.C, cv=args.cv, class_weight=args.class_weight, sampling=args.sampling,
                test=args.test, test_fraction=args.test_fraction, seed=args.seed, progress=not args.quiet,
                max_iter=args.max_iter, max_memory=args.max_memory)


def cmd_classify(args: argparse.Namespace) -> int:
    from cnncodes.classify import classify_codes, summarize

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
    from cnncodes.classify import compare

    rows = compare(args.codes, args.out, classifiers=split_list(args.classifiers), layers=args.layers,
                   overwrite=args.overwrite, **_classify_kwargs(args))
    print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
    _print_pick(rows, Path(args.out))
    print(f"table in {args.out}/compare.md and compare.csv; one report folder per run")
    return EXIT_OK



def cmd_predict(args: argparse.Namespace) -> int:
    from cnncodes.classify.runs import predict_run

    result = predict_run(args.run_dir, one_or_list(args.images), args.out, codes_out=args.codes_out,
                         weights=args.weights, threshold=args.threshold, positive=args.positive,
                         device=args.device, precision=args.precision, batch_size=args.batch_size,
                         workers=args.workers, progress=not args.quiet, overwrite=args.overwrite,
                         **column_kwargs(args))
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
    from cnncodes.classify.data import require_two_classes
    from cnncodes.classify.stream import parse_size
    from cnncodes.classify.train import check_options
    from cnncodes.extract.outputs import claim_output
    from cnncodes.extract.reader import list_images

    layers, classifiers = _layer_runs(args.layers), split_list(args.classifiers)
    if not classifiers:
        raise UsageError("--classifiers names no classifier")
    samplings = args.sampling.split(",")
    for name in classifiers:  # before the long extraction, not after it
        for mode in samplings:
            check_options(name, args.normalize, mode)
    if args.max_memory is not None:
        parse_size(args.max_memory)
    listing = list_images(args.images, **column_kwargs(args))  # the class count, before torch loads and the long extraction
    require_two_classes(listing.labels, listing.class_names, args.images)
    check_preprocess(args)
    with claim_output(args.out, images=args.images, overwrite=args.overwrite,
                      resumes=lambda out: any(out.glob("codes.h5*"))) as out:  # a rerun updates its own folder
        return _run_into(out, args, layers, classifiers, samplings)


def _run_into(out: Path, args: argparse.Namespace, layers: list[list[str]], classifiers: list[str],
              samplings: list[str]) -> int:
    from cnncodes.classify import classify_codes, compare, summarize
    from cnncodes.extract import extract_codes

    codes = out / "codes.h5"
    result = extract_codes(args.images, codes, **extract_kwargs(args))
    print_extract_summary(result)
    if none_usable(result, "run"):
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

