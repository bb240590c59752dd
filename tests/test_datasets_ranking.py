from pathlib import Path

import numpy as np
import pytest
import torch

from vif.datasets import ranking as data
from vif.errors import DatasetNotFoundError, InputError

FIXTURE = Path(__file__).parent / "fixtures" / "xmc_mediamill"


def test_synthetic_mediamill_shape_and_relevance_counts():
    d = data.make_synthetic("mediamill-like", n_train=600, n_test=80, seed=3)
    assert d.synthetic and d.n_items == 101
    assert d.X_train.shape == (600, 8) and d.X_test.shape == (80, 8)
    assert bool((d.Y_train.sum(dim=1) >= 2).all()) and bool((d.Y_test.sum(dim=1) >= 1).all())
    assert set(torch.unique(d.Y_train).tolist()) == {0.0, 1.0}
    # standardised SVD features on the training queries
    assert torch.allclose(d.X_train.mean(dim=0), torch.zeros(8, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(d.X_train.std(dim=0, unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-10)
    # about 4.4 relevant items per training query, like Mediamill
    assert 3.9 < float(d.Y_train.sum(dim=1).mean()) < 4.9


def test_synthetic_is_deterministic_and_seeded():
    a = data.make_synthetic("mediamill-like", n_train=200, n_test=20, seed=1)
    b = data.make_synthetic("mediamill-like", n_train=200, n_test=20, seed=1)
    c = data.make_synthetic("mediamill-like", n_train=200, n_test=20, seed=2)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.Y_test, b.Y_test)
    assert not torch.equal(a.Y_train, c.Y_train)


def test_synthetic_delicious_shape():
    d = data.make_synthetic("delicious-like", n_train=150, n_test=20)
    assert d.n_items == 983 and d.X_train.shape == (150, 8)
    assert 15 < float(d.Y_train.sum(dim=1).mean()) < 23


def test_synthetic_rejects_unknown_shape():
    with pytest.raises(InputError, match="mediamill-like"):
        data.make_synthetic("letor")


def test_read_xmc_parses_labels_and_features():
    features, labels = data.read_xmc(FIXTURE / "Mediamill_data.txt")
    assert features.shape == (24, 6) and labels.shape == (24, 5)
    first_lines = (FIXTURE / "Mediamill_data.txt").read_text().splitlines()[1:]
    # independent parse of a few lines
    for row in (0, 1, 2, 5):
        parts = first_lines[row].split()
        expected_labels = set() if ":" in parts[0] else {int(x) for x in parts[0].split(",")}
        assert set(np.flatnonzero(labels[row].toarray())) == expected_labels
        pairs = [p for p in parts if ":" in p]
        for pair in pairs:
            col, val = pair.split(":")
            assert features[row, int(col)] == pytest.approx(float(val))


def test_read_split_is_zero_based():
    assert data.read_split(FIXTURE / "mediamill_trSplit.txt", 0)[:3].tolist() == [0, 1, 2]
    assert data.read_split(FIXTURE / "mediamill_tstSplit.txt", 1)[:2].tolist() == [0, 1]
    with pytest.raises(InputError, match="split"):
        data.read_split(FIXTURE / "mediamill_trSplit.txt", 5)


def test_load_xmc_from_folder_and_from_cache(tmp_path, monkeypatch):
    d = data.load_xmc(FIXTURE, n_train=6, n_test=4, n_components=2)
    assert not d.synthetic and d.n_items == 5
    assert d.X_train.shape == (6, 2) and d.Y_test.shape == (4, 5)
    assert bool((d.Y_train.sum(dim=1) >= 2).all())
    # by name from the cache folder
    folder = tmp_path / "mediamill"
    folder.mkdir()
    for path in FIXTURE.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("VIF_DATA_DIR", str(tmp_path))
    e = data.load_xmc("mediamill", n_train=6, n_test=4, n_components=2)
    assert torch.equal(d.Y_train, e.Y_train)


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VIF_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="XMLRepository"):
        data.load_xmc("delicious")


def test_too_few_queries_is_a_clear_error():
    with pytest.raises(InputError, match="n_train"):
        data.load_xmc(FIXTURE, n_train=100, n_test=4, n_components=2)


def test_malformed_header(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("24 six 5\n1 0:1.0\n")
    with pytest.raises(InputError, match="first line"):
        data.read_xmc(bad)


@pytest.mark.parametrize("body, message", [("", "0 data lines"), ("0,x 1:0.5\n", "line 2"), ("0 1:a\n", "line 2")])
def test_empty_files_and_bad_labels_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "Bad_data.txt"
    path.write_text(("1 3 2\n" if body else "2 3 2\n") + body)
    with pytest.raises(InputError, match=message):
        data.read_xmc(path)


@pytest.mark.parametrize("body, message", [
    ("0 1:1e999\n", "line 2: .*non-finite"), ("0 7:0.5\n", "line 2: feature index 7"),
    ("4 1:0.5\n", "line 2: label index 4"), ("-1 1:0.5\n", "line 2: label index -1"),
])
def test_xmc_values_and_indices_outside_the_header_name_the_line(tmp_path, body, message):
    path = tmp_path / "Bad_data.txt"
    path.write_text("1 3 2\n" + body)
    with pytest.raises(InputError, match=message):
        data.read_xmc(path)


def test_xmc_empty_file_and_bad_encoding_name_the_file_and_line(tmp_path):
    path = tmp_path / "Bad_data.txt"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="line 1: the file is empty"):
        data.read_xmc(path)
    path.write_bytes(b"2 3 2\n0 1:0.5\n1 2:\xff\n")
    with pytest.raises(InputError, match=r"Bad_data.txt, line 3: not UTF-8"):
        data.read_xmc(path)


def test_split_files_reject_indices_beyond_the_data_and_non_integers(tmp_path):
    for body, message in (("1 2\n3 99\n", r"line 2: index \[3, 99\] outside \[1, 24\]"), ("1 2\nx 3\n", "line 2: split"),
                          ("1 2\n0 3\n", "line 2"), ("", "empty")):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for path in FIXTURE.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / "mediamill_trSplit.txt").write_text(body)
        with pytest.raises(InputError, match=message):
            data.load_xmc(folder, n_train=6, n_test=4, n_components=2)


def test_n_components_must_be_smaller_than_the_features():
    with pytest.raises(InputError, match=r"n_components must be an int in \[1, 6\)"):
        data.load_xmc(FIXTURE, n_train=6, n_test=4, n_components=6)


def test_a_feature_repeated_within_a_line_is_refused(tmp_path):
    path = tmp_path / "Bad_data.txt"
    path.write_text("2 3 2\n0 1:0.5 2:1.0\n1 0:1.0 2:0.5 0:2.0\n")
    with pytest.raises(InputError, match=r"Bad_data.txt, line 3: feature index 0 appears 2 times"):
        data.read_xmc(path)


def _copy_fixture(folder):
    folder.mkdir()
    for path in FIXTURE.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_overlapping_train_and_test_splits_are_refused(tmp_path):
    folder = _copy_fixture(tmp_path / "overlap")
    lines = (folder / "mediamill_tstSplit.txt").read_text().splitlines()
    train_first = (folder / "mediamill_trSplit.txt").read_text().splitlines()[0].split()[0]
    lines[2] = f"{train_first} {lines[2].split()[1]}"  # test point 3 of split 0 is training point 1
    (folder / "mediamill_tstSplit.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"mediamill_tstSplit.txt, line 3: test point {train_first} of split 0 is "
                                         r"also a training point \(.*mediamill_trSplit.txt, line 1\)"):
        data.load_xmc(folder, n_train=6, n_test=4, n_components=2)
    data.load_xmc(folder, split=1, n_train=6, n_test=4, n_components=2)  # the other split is clean


def test_a_point_listed_twice_in_a_split_is_refused(tmp_path):
    folder = _copy_fixture(tmp_path / "twice")
    lines = (folder / "mediamill_trSplit.txt").read_text().splitlines()
    lines[4] = f"{lines[1].split()[0]} {lines[4].split()[1]}"
    (folder / "mediamill_trSplit.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"mediamill_trSplit.txt, line 5: point 2 of split 0 is already listed on line 2"):
        data.load_xmc(folder, n_train=6, n_test=4, n_components=2)
