"""`cnncodes export`: codes out to npy + parquet and to one parquet table, read back with pyarrow and numpy alone."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import cnncodes
from cnncodes import pipeline
from codes_fixtures import imbalanced_codes, split_column, write_codes_file
from cnncodes.extract import open_codes


@pytest.fixture
def codes_with_failures(tmp_path):
    codes, y = imbalanced_codes((7, 5))
    ok = np.ones(len(y), bool)
    ok[[2, 9]] = False
    return write_codes_file(tmp_path / "codes.h5", codes, y, ["cat", "dog"], split=split_column(y), ok=ok)


def _rows_equal(table, cf, keep):
    assert table.column("path").to_pylist() == list(cf.rows.paths[keep])
    assert table.column("label").to_pylist() == [cf.class_names[i] for i in cf.rows.labels[keep]]
    assert table.column("split").to_pylist() == list(cf.rows.split[keep])
    assert table.column("ok").to_pylist() == list(cf.rows.ok[keep])
    assert table.column("error").to_pylist() == list(cf.rows.errors[keep])


def test_npy_export_is_row_for_row_the_codes_file(codes_with_failures, tmp_path, capsys):
    out = tmp_path / "npy"
    assert pipeline.main(["export", str(codes_with_failures), "--to", "npy", str(out)]) == 0
    cf, everything = open_codes(codes_with_failures), slice(None)
    for tap, codes in cf.codes.items():
        got = np.load(out / f"{tap}.npy", mmap_mode="r")
        assert got.dtype == np.float32 and got.shape == codes.shape
        np.testing.assert_array_equal(got, codes)  # NaN rows of failed images included
    table = pq.read_table(out / "rows.parquet")
    _rows_equal(table, cf, everything)
    assert table.column("error").to_pylist()[2] == "cannot identify image file"
    assert b"cnncodes.recipe" in table.schema.metadata


def test_parquet_export_with_ok_only_drops_failed_rows(codes_with_failures, tmp_path):
    out = cnncodes.export(codes_with_failures, tmp_path / "codes.parquet", to="parquet", ok_only=True)
    table = pq.read_table(out)
    cf = open_codes(codes_with_failures)
    keep = np.flatnonzero(cf.rows.ok)
    assert table.num_rows == len(keep) == len(cf.rows) - 2
    _rows_equal(table, cf, keep)
    for tap, codes in cf.codes.items():
        np.testing.assert_array_equal(np.array(table.column(tap).to_pylist(), np.float32), codes[keep])


def test_export_refuses_an_existing_output_without_overwrite(codes_with_failures, tmp_path, capsys):
    out = tmp_path / "npy"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert pipeline.main(["export", str(codes_with_failures), "--to", "npy", str(out)]) == 2
    assert "already holds files (mine.txt)" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    assert pipeline.main(["export", str(codes_with_failures), "--to", "npy", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["block4.npy", "penultimate.npy", "rows.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_of_a_file_that_is_not_a_codes_file_is_one_line(tmp_path, capsys):
    (tmp_path / "x.h5").write_text("not hdf5")
    assert pipeline.main(["export", str(tmp_path / "x.h5"), "--to", "parquet", str(tmp_path / "x.parquet")]) == 2
    assert "not an HDF5 codes file" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()
