"""Survival loaders: sizes, codings, the paper's split, and the METABRIC file loader on a tiny fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vif.datasets import survival
from vif.datasets._files import sha256
from vif.errors import DatasetNotFoundError, InputError

FIXTURE = Path(__file__).parent / "fixtures" / "metabric_tiny.csv"


def test_support_has_deepsurv_size_and_covariates():
    data = survival.load_support()
    assert data.n == 8873  # DeepSurv's size after dropping incomplete rows
    assert data.covariates == ["age", "sex", "race", "num_co", "diabetes", "dementia", "cancer", "meanbp", "hrt",
                               "resp", "temp", "wblc", "sod", "crea"]
    assert not data.frame.isna().any().any()
    assert set(data.frame["cancer"].unique()) == {0.0, 1.0, 2.0}
    assert set(data.frame["event"].unique()) == {0.0, 1.0}
    assert (data.frame["time"] > 0).all()


def test_breast_cancer_sets():
    rotterdam, gbsg = survival.load_rotterdam(), survival.load_gbsg2()
    assert (rotterdam.n, len(rotterdam.covariates)) == (2982, 9)
    assert (gbsg.n, len(gbsg.covariates)) == (686, 8)
    for data in (rotterdam, gbsg):
        assert not data.frame.isna().any().any()
        assert set(data.frame["size"].unique()) <= {0.0, 1.0, 2.0}


def test_split_sizes_seed_and_standardisation():
    data = survival.load_support()
    parts = survival.split(data, seed=0)
    assert (len(parts.rows_train), len(parts.rows_val), len(parts.rows_test)) == (5678, 1420, 1775)
    assert len(np.unique(np.r_[parts.rows_train, parts.rows_val, parts.rows_test])) == data.n
    x, _, _ = parts.part("train")
    continuous = np.isin(data.covariates, data.continuous)
    np.testing.assert_allclose(x[:, continuous].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(x[:, continuous].std(0), 1, atol=1e-12)
    raw = data.frame[data.covariates].to_numpy()[parts.rows_train]
    np.testing.assert_array_equal(x[:, ~continuous], raw[:, ~continuous])
    np.testing.assert_allclose(x * parts.scale + parts.mean, raw, atol=1e-10)
    np.testing.assert_array_equal(survival.split(data, seed=0).rows_test, parts.rows_test)
    assert not np.array_equal(survival.split(data, seed=1).rows_test, parts.rows_test)
    with pytest.raises(InputError, match="test must be in"):
        survival.split(data, test=1.5)


def test_metabric_loader_reads_the_pycox_layout():
    data = survival.load_metabric(FIXTURE, expected_sha256=sha256(FIXTURE))
    assert data.n == 12 and data.covariates == [f"x{k}" for k in range(9)]
    assert list(data.frame.columns[-2:]) == ["time", "event"]
    assert data.sha256 == sha256(FIXTURE)
    parts = survival.split(data, seed=0)
    assert len(parts.rows_test) == 2


def test_metabric_from_cache_folder(monkeypatch, tmp_path):
    (tmp_path / "metabric.csv").write_bytes(FIXTURE.read_bytes())
    monkeypatch.setenv("VIF_DATA_DIR", str(tmp_path))
    assert survival.load_metabric().n == 12


def test_metabric_missing_file_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("VIF_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="pycox"):
        survival.load_metabric()


def test_metabric_checksum_and_layout_errors(tmp_path):
    with pytest.raises(InputError, match="SHA-256"):
        survival.load_metabric(FIXTURE, expected_sha256="0" * 64)
    bad = tmp_path / "metabric.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="columns"):
        survival.load_metabric(bad)
    other = tmp_path / "metabric.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="suffix"):
        survival.load_metabric(other)


def _edited(tmp_path, line: int, column: int, value: str):
    lines = FIXTURE.read_text().splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    path = tmp_path / "metabric.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line, column, value, message", [
    (4, 2, "abc", r"line 4: column 'x2' has the non-numeric or missing value 'abc'"),
    (5, 0, "", r"line 5: column 'x0' has the non-numeric or missing value ''"),
    (6, 9, "-3.5", r"line 6: a negative duration \(time = -3.5\)"),
    (7, 10, "2", r"line 7: an event that is not 0 or 1 \(event = 2\)"),
    (3, 8, "inf", r"line 3: column 'x8'"),
])
def test_metabric_rejects_bad_rows_naming_the_file_and_line(tmp_path, line, column, value, message):
    path = _edited(tmp_path, line, column, value)
    with pytest.raises(InputError, match=message) as error:
        survival.load_metabric(path)
    assert str(path) in str(error.value)


def test_metabric_empty_header_only_and_bad_encoding(tmp_path):
    path = tmp_path / "metabric.csv"
    for content, message in ((b"", "is empty"), (FIXTURE.read_bytes().splitlines()[0] + b"\n", "no data rows"),
                             (FIXTURE.read_bytes().replace(b"50.47", b"5\xff.47"), "line 2: not UTF-8")):
        path.write_bytes(content)
        with pytest.raises(InputError, match=message):
            survival.load_metabric(path)


def test_metabric_zero_durations_are_dropped_with_a_warning_naming_the_lines(tmp_path):
    path = _edited(tmp_path, 4, 9, "0")
    with pytest.warns(UserWarning, match=r"dropped 1 patient\(s\) with duration 0 \(lines 4\)"):
        assert survival.load_metabric(path).n == 11
