"""Listing images: a single file or several paths; split folder names; manifest headers; (issue 22, items 2
and 3) symlinked folders are listed (each real folder once), and manifest columns
that are not understood are refused by name unless --path-column/--label-column/--split-column name them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import cnncodes
from cnncodes import pipeline
from conftest import FAST, ROOT, make_tree, write_image
from cnncodes.extract.reader import list_images
from cnncodes.finetune.data import choose_splits


def _codes_counts(path: Path) -> dict[tuple[str, str], int]:
    """(split, class) -> rows of a codes file, read with plain h5py."""
    with h5py.File(path, "r") as h5:
        names = json.loads(h5.attrs["class_names"])
        pairs = zip(h5["split"].asstr()[()], h5["labels"][()])
        counts: dict[tuple[str, str], int] = {}
        for split, label in pairs:
            key = (split, names[label] if label >= 0 else "")
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture
def linked_train(tmp_path: Path) -> Path:
    """sym/train -> elsewhere/train (3 per class) beside a real sym/val (2 per class)."""
    make_tree(tmp_path / "elsewhere", per_class=3, splits=("train",))
    root = make_tree(tmp_path / "sym", per_class=2, splits=("val",), seed=1)
    os.symlink(tmp_path / "elsewhere" / "train", root / "train", target_is_directory=True)
    return root


def test_symlinked_train_beside_real_val_is_extracted_with_both_splits(linked_train, tmp_path):
    out = tmp_path / "codes.h5"
    assert pipeline.main(["extract", str(linked_train), "-o", str(out), *FAST, "--workers", "0"]) == 0
    assert _codes_counts(out) == {("train", "cat"): 3, ("train", "dog"): 3, ("val", "cat"): 2, ("val", "dog"): 2}


def test_finetune_split_detection_sees_the_symlinked_train(linked_train):
    listing = list_images(linked_train)
    splits = choose_splits(listing, listing.labels >= 0, val_fraction=0.0, seed=0)
    assert splits.split_source == "split column (train / val)"
    assert len(splits.train) == 6 and len(splits.test) == 4


def test_symlinked_class_folder_is_listed_under_its_link_name(tmp_path):
    root = make_tree(tmp_path / "imgs", classes=("cat",), per_class=2)
    make_tree(tmp_path / "kept_elsewhere", classes=("hound",), per_class=3)
    os.symlink(tmp_path / "kept_elsewhere" / "hound", root / "dog", target_is_directory=True)
    listing = list_images(root)
    assert listing.class_names == ["cat", "dog"]
    assert np.bincount(listing.labels).tolist() == [2, 3]
    assert all((root / p).is_file() for p in listing.paths)


def test_a_symlink_loop_is_listed_once(tmp_path):
    root = make_tree(tmp_path / "imgs", per_class=2)
    os.symlink(root, root / "cat" / "again", target_is_directory=True)  # imgs/cat/again -> imgs
    os.symlink("..", root / "dog" / "up", target_is_directory=True)  # imgs/dog/up -> imgs
    listing = list_images(root)
    assert sorted(listing.paths) == sorted(f"{c}/img_{k:03d}.png" for c in ("cat", "dog") for k in range(2))


def test_a_tree_of_linked_image_files_lists_as_the_files_do(tmp_path):
    """git-annex or DVC trees: every image a link. Links named like images are taken for images without being
    followed (a stat each); a link to a folder is still walked, a link named otherwise still ignored."""
    real = make_tree(tmp_path / "real", per_class=3)
    linked = tmp_path / "linked"
    for image in sorted(real.rglob("*.png")):
        (linked / image.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(image, linked / image.parent.name / image.name)
    os.symlink(real / "cat", linked / "bird", target_is_directory=True)
    os.symlink(real / "cat" / "img_000.png", linked / "cat" / "notes")
    expected, listing = list_images(real), list_images(linked)
    assert listing.class_names == ["bird", "cat", "dog"]
    assert sorted(p for p in listing.paths if not p.startswith("bird/")) == sorted(expected.paths)
    assert sorted(p for p in listing.paths if p.startswith("bird/")) == [f"bird/img_{k:03d}.png" for k in range(3)]
    assert all((linked / p).is_file() for p in listing.paths)


def _manifest(tmp_path: Path, header: str, rows: list[str]) -> Path:
    make_tree(tmp_path / "images", per_class=3)
    path = tmp_path / "list.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _species_rows(with_fold: bool = False) -> list[str]:
    return [f"images/{c}/img_{k:03d}.png,{c}" + (f",{'train' if k else 'test'}" if with_fold else "")
            for c in ("cat", "dog") for k in range(3)]


@pytest.mark.parametrize("command", ["extract", "run", "finetune", "advise"])
def test_manifest_with_an_unknown_label_column_is_refused_naming_it(tmp_path, capsys, command):
    manifest = _manifest(tmp_path, "path,species", _species_rows())
    out = tmp_path / "out"
    target = ["-o", str(tmp_path / "codes.h5")] if command == "extract" else ["--out", str(out)]
    assert pipeline.main([command, str(manifest), *target, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cnncodes {command}: error: ") and "\n" not in err
    assert "column(s) species not understood" in err and "--label-column" in err
    assert not (tmp_path / "codes.h5").exists() and not (out / "codes.h5").exists() and not (out / "report.json").exists()


def test_manifest_columns_named_by_the_options_are_read(tmp_path):
    manifest = _manifest(tmp_path, "image_path,species,fold", _species_rows(with_fold=True))
    with pytest.raises(ValueError, match=r"column\(s\) species, fold not understood"):
        list_images(manifest)
    out = tmp_path / "codes.h5"
    argv = ["extract", str(manifest), "-o", str(out), *FAST, "--workers", "0"]
    assert pipeline.main([*argv, "--label-column", "species", "--split-column", "fold"]) == 0
    assert _codes_counts(out) == {("train", "cat"): 2, ("train", "dog"): 2, ("test", "cat"): 1, ("test", "dog"): 1}
    api = tmp_path / "api.h5"  # the Python API takes the same names
    cnncodes.extract_codes(manifest, api, weights="random", resize=72, crop=64, precision="fp32", workers=0,
                           progress=False, label_column="species", split_column="fold")
    assert _codes_counts(api) == _codes_counts(out)


def test_column_options_are_refused_where_they_do_not_apply(tmp_path, capsys):
    manifest = _manifest(tmp_path, "path,species", _species_rows())
    with pytest.raises(ValueError, match="--label-column kind: no such column in the first row"):
        list_images(manifest, label_column="kind")
    with pytest.raises(ValueError, match="only a CSV manifest has columns"):
        list_images(tmp_path / "images", label_column="species")
    with pytest.raises(ValueError, match="one column cannot play two roles"):
        list_images(manifest, path_column="path", label_column="PATH")


def test_advise_reads_the_named_label_column_and_carries_it_into_its_commands(tmp_path, capsys):
    make_tree(tmp_path / "images", per_class=6)
    rows = [f"images/{c}/img_{k:03d}.png,{c}" for c in ("cat", "dog") for k in range(6)]
    (tmp_path / "list.csv").write_text("\n".join(["file,species", *rows]) + "\n")
    argv = ["advise", str(tmp_path / "list.csv"), "--json", "--sample", "10", *FAST, "--label-column", "species"]
    assert pipeline.main(argv) == 0
    advice = json.loads(capsys.readouterr().out)
    assert advice["size"]["per_class"] == {"cat": 6, "dog": 6}
    assert all("--label-column species" in c for c in advice["commands"])


def test_run_and_predict_read_the_named_columns(tmp_path, capsys):
    import csv

    manifest = _manifest(tmp_path, "image_path,species,fold", _species_rows(with_fold=True))
    columns = ["--label-column", "species", "--split-column", "fold"]
    run = tmp_path / "run"
    assert pipeline.main(["run", str(manifest), "--out", str(run), *FAST, "--workers", "0", "--classifiers", "svm",
                          "--cv", "0", *columns]) == 0
    assert _codes_counts(run / "codes.h5")[("test", "dog")] == 1
    preds = tmp_path / "preds.csv"
    predict = ["predict", str(run / "classify"), str(manifest), "-o", str(preds), "--workers", "0", "--quiet"]
    assert pipeline.main(predict) == 2 and "species" in capsys.readouterr().err and not preds.exists()
    assert pipeline.main([*predict, *columns]) == 0
    with open(preds, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["true"] for r in rows) == ["cat"] * 3 + ["dog"] * 3


def test_a_single_file_or_several_paths_are_listed_under_their_common_root(tmp_path):
    from cnncodes.extract.reader import list_images

    images = make_tree(tmp_path / "images", per_class=2)
    one = list_images(images / "cat" / "img_000.png")
    assert one.paths == ["img_000.png"] and one.root == (images / "cat").resolve() and one.labels.tolist() == [-1]

    odd = tmp_path / "photo.data"  # an image without an image extension is recognised by its content
    write_image(odd, np.random.default_rng(1), fmt="PNG")
    assert list_images(odd).paths == ["photo.data"]
    (tmp_path / "notes.dat").write_text("path,label\n")
    with pytest.raises(ValueError, match="neither an image"):
        list_images(tmp_path / "notes.dat")

    several = list_images([images / "dog", images / "cat" / "img_001.png", images / "cat" / "img_001.png"])
    assert several.root == images.resolve()
    assert several.paths == ["cat/img_001.png", "dog/img_000.png", "dog/img_001.png"]
    assert several.labels.tolist() == [-1, -1, -1]  # dog/ alone has no class subfolders: unlabeled
    labelled = list_images([images, tmp_path / "photo.data"])
    assert labelled.root == tmp_path.resolve() and labelled.class_names == ["cat", "dog"]
    assert dict(zip(labelled.paths, labelled.labels.tolist()))["images/dog/img_001.png"] == 1
    assert dict(zip(labelled.paths, labelled.labels.tolist()))["photo.data"] == -1
    manifest = images / "list.csv"
    manifest.write_text("path,label\ncat/img_000.png,cat\n")
    with pytest.raises(ValueError, match="manifest alone"):
        list_images([manifest, images / "dog"])


@pytest.mark.parametrize("folder", ["valid", "validation", "dev", "Val"])
def test_split_folder_names_are_recognised(tmp_path, folder):
    from cnncodes.extract.reader import list_images

    root = make_tree(tmp_path / "images", per_class=2, splits=("train", folder))
    listing = list_images(root)
    assert listing.class_names == ["cat", "dog"]
    assert sorted(set(listing.splits)) == ["train", "val"]


def test_split_folders_mixed_with_class_folders_are_refused(tmp_path):
    from cnncodes.extract.reader import list_images

    root = make_tree(tmp_path / "images", per_class=1, splits=("train", "valid"))
    make_tree(root, classes=("owl",), per_class=1)
    with pytest.raises(ValueError, match=r"train, valid look like splits but owl do not"):
        list_images(root)


@pytest.mark.parametrize("header,order", [("filename,class", "pl"), ("image,label", "pl"), ("file,target", "pl"),
                                          ("path,class,split", "pls"), ("Label,Filepath", "lp"),
                                          ("img,category,subset", "pls")])
def test_manifest_accepts_common_header_names(tmp_path, header, order):
    from cnncodes.extract.reader import list_images

    make_tree(tmp_path / "images", per_class=2)
    lines = [header]
    for cls in ("cat", "dog"):
        for k, split in enumerate(("train", "validation")):
            cells = {"p": f"images/{cls}/img_{k:03d}.png", "l": cls, "s": split}
            lines.append(",".join(cells[c] for c in order))
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    listing = list_images(tmp_path / "list.csv")
    assert listing.class_names == ["cat", "dog"] and len(listing) == 4
    assert set(listing.splits) == ({"train", "val"} if "s" in order else {""})


def test_manifest_with_an_unknown_header_is_refused(tmp_path):
    from cnncodes.extract.reader import list_images

    make_tree(tmp_path / "images", per_class=1)
    (tmp_path / "list.csv").write_text("picture,kind\nimages/cat/img_000.png,cat\n")
    with pytest.raises(ValueError, match=r"first row \(picture,kind\) looks like a header.*expected the header path,label"):
        list_images(tmp_path / "list.csv")


def test_manifest_without_header_still_reads_its_first_row(tmp_path):
    from cnncodes.extract.reader import list_images

    make_tree(tmp_path / "images", per_class=1)
    (tmp_path / "list.csv").write_text("images/cat/img_000.png,cat\nimages/dog/img_000.png,dog,test\n")
    listing = list_images(tmp_path / "list.csv")
    assert listing.class_names == ["cat", "dog"] and listing.splits == ["", "test"]


# In a fresh process (Pillow's plugins not loaded yet): the first extension asked about, then every registered one
# and a few others, in both cases; whether every plugin got loaded by the first question; Pillow's registered set.
EXTENSIONS_PROBE = """
import json, sys
from PIL import Image
from cnncodes.extract.folders import is_image_extension, is_image_name

first = is_image_extension(sys.argv[1])
all_loaded = "PIL.TiffImagePlugin" in sys.modules
registered = sorted(ext.lower() for ext in Image.registered_extensions())
asked = sorted(set(registered) | set(sys.argv[2:]))
answers = {ext: [is_image_extension(ext), is_image_extension(ext.upper()), is_image_name("a" + ext),
                 is_image_name(".a" + ext)] for ext in asked}
print(json.dumps({"first": first, "all_loaded": all_loaded, "registered": registered, "answers": answers}))
"""


@pytest.mark.parametrize("first, is_image, loads_every_plugin", [(".JPG", True, False), (".png", True, False),
                                                                 (".tif", True, True), (".txt", False, True)])
def test_image_extensions_are_pillows_registered_ones_and_common_ones_load_no_other_plugin(tmp_path, first, is_image,
                                                                                         loads_every_plugin):
    """The listing's rule (a name is an image when Pillow registers its extension) answers exactly as
    Image.registered_extensions(), whatever is asked first; the common formats' extensions are answered without
    importing every Pillow plugin (the main process lists the images before the decoders start)."""
    others = [".txt", ".csv", ".npy", "", ".jpg.bak", ".fpx", ".mic"]
    done = subprocess.run([sys.executable, "-c", EXTENSIONS_PROBE, first, *others], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert probe["first"] is is_image and probe["all_loaded"] is loads_every_plugin
    registered = set(probe["registered"])
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".webp"} <= registered
    for ext, (lower, upper, named, hidden) in probe["answers"].items():
        assert lower is upper is named is (ext in registered) and hidden is False, ext
