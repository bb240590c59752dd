"""Multi-label data framed as ranking: queries are instances, items are labels.

Two sources, one preprocessing (as in the paper's code): raw features reduced to ``n_components = 8``
dimensions by truncated SVD fitted on the training queries, then standardised; the first ``n_train``
training queries with at least 2 relevant items and the first ``n_test`` test queries with at least one.

* **Synthetic, offline default** (:func:`make_synthetic`): ``"mediamill-like"`` (101 items, 120 raw
  features, about 4.4 relevant items per query, like Mediamill) and ``"delicious-like"`` (983 items,
  500 raw features, about 19 relevant per query, like Delicious). Raw features are a noisy linear image
  of an 8-dimensional latent vector; relevance is planted: item ``a`` is relevant to query ``q`` when its
  utility ``z_q . v_a + b_a + Gumbel noise`` is among the query's top ``k_q`` (``k_q = 2 + Poisson`` for
  training, ``1 + Poisson`` for test queries, so some test queries have a single relevant item); the
  item biases ``b_a`` follow a Zipf-like popularity profile. These are *synthetic*: no number computed on
  them is a claim about Mediamill or Delicious.
* **Real** (:func:`load_xmc`): the Extreme Classification Repository text format (Bhatia et al.), e.g.
  Mediamill (43,907 points, 120 features, 101 labels) and Delicious (16,105 points, 500 features,
  983 labels). Files ``<Name>_data.txt`` (header ``n_points n_features n_labels``, then one line per point:
  ``l1,l2,... f:v f:v ...`` with 0-based label and feature indices), ``<name>_trSplit.txt`` and
  ``<name>_tstSplit.txt`` (one column per split, 1-based point indices). Obtain them from
  http://manikvarma.org/downloads/XC/XMLRepository.html (licence: research use, see that page) and unzip
  into the cache folder ``$VIF_DATA_DIR/<name>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import InputError
from . import _files

__all__ = ["RankingData", "SYNTHETIC", "XMC_FILES", "load", "load_xmc", "make_synthetic", "read_xmc", "read_split"]

SYNTHETIC = {
    "mediamill-like": dict(n_items=101, n_raw=120, mean_extra=2.4, popularity=1.0),
    "delicious-like": dict(n_items=983, n_raw=500, mean_extra=17.0, popularity=0.7),
}
XMC_FILES = {
    "mediamill": ("Mediamill_data.txt", "mediamill_trSplit.txt", "mediamill_tstSplit.txt"),
    "delicious": ("Delicious_data.txt", "delicious_trSplit.txt", "delicious_tstSplit.txt"),
}
_XMC_URL = "http://manikvarma.org/downloads/XC/XMLRepository.html"


@dataclass(frozen=True)
class RankingData:
    """Train and test queries, float64 tensors.

    Attributes:
        name: dataset name.
        X_train: ``(n_train, n_components)`` features. Y_train: ``(n_train, n_items)`` 0/1 relevance.
        X_test: ``(n_test, n_components)``. Y_test: ``(n_test, n_items)``.
        synthetic: True for generated data.
    """

    name: str
    X_train: torch.Tensor
    Y_train: torch.Tensor
    X_test: torch.Tensor
    Y_test: torch.Tensor
    synthetic: bool

    @property
    def n_items(self) -> int:
        """Number of items (labels)."""
        return self.Y_train.shape[1]


def _reduce(raw_train, raw_test, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD fitted on the training rows, then standardised with the training mean and std."""
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(n_components=n_components, random_state=seed).fit(raw_train)
    train, test = svd.transform(raw_train), svd.transform(raw_test)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def _select(labels, minimum: int, count: int, what: str) -> np.ndarray:
    """Indices of the first ``count`` rows with at least ``minimum`` labels."""
    sizes = np.asarray(labels.sum(axis=1)).ravel()
    rows = np.flatnonzero(sizes >= minimum)[:count]
    if len(rows) < count:
        raise InputError(
            f"only {len(rows)} {what} queries have >= {minimum} relevant items but {count} were asked for; "
            f"pass a smaller n_{what}."
        )
    return rows


def _finish(name, raw_tr, Y_tr, raw_te, Y_te, n_train, n_test, n_components, seed, synthetic) -> RankingData:
    n_features = raw_tr.shape[1]
    if isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components < n_features:
        raise InputError(f"{name}: n_components must be an int in [1, {n_features}) (the SVD keeps fewer components "
                         f"than the {n_features} features), got {n_components!r}.")
    train_rows = _select(Y_tr, 2, n_train, "train")
    test_rows = _select(Y_te, 1, n_test, "test")
    X_tr, X_te = _reduce(raw_tr[train_rows], raw_te[test_rows], n_components, seed)

    def dense(matrix) -> torch.Tensor:
        matrix = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        return torch.as_tensor((matrix > 0).astype(np.float64))

    return RankingData(
        name, torch.as_tensor(X_tr), dense(Y_tr[train_rows]), torch.as_tensor(X_te), dense(Y_te[test_rows]), synthetic
    )


def make_synthetic(
    shape: str = "mediamill-like", *, n_train: int = 5000, n_test: int = 500, n_components: int = 8, seed: int = 0
) -> RankingData:
    """Deterministic synthetic ranking data shaped like Mediamill or Delicious (see the module docstring).

    Args:
        shape: ``"mediamill-like"`` or ``"delicious-like"``.
        n_train, n_test: numbers of training (>= 2 relevant) and test (>= 1 relevant) queries.
        n_components: SVD dimension of the features.
        seed: seeds the generator and the SVD; same seed, same data.
    """
    if shape not in SYNTHETIC:
        raise InputError(f"shape={shape!r} is not one of {sorted(SYNTHETIC)}.")
    spec, seed = SYNTHETIC[shape], _files.check_seed(seed)
    n_items, rng = spec["n_items"], np.random.default_rng([seed, spec["n_items"]])
    latent_dim = n_components
    n = n_train + n_test
    latent = rng.standard_normal((n, latent_dim))
    mixing = rng.standard_normal((latent_dim, spec["n_raw"])) / np.sqrt(latent_dim)
    raw = latent @ mixing + 0.3 * rng.standard_normal((n, spec["n_raw"]))
    items = rng.standard_normal((n_items, latent_dim))
    popularity = -spec["popularity"] * np.log1p(rng.permutation(n_items))
    utility = latent @ items.T + popularity + rng.gumbel(size=(n, n_items))
    extra = rng.poisson(spec["mean_extra"], size=n)
    k = np.concatenate([2 + extra[:n_train], 1 + extra[n_train:]]).clip(max=n_items - 1)
    rank = np.argsort(np.argsort(-utility, axis=1), axis=1)
    Y = (rank < k[:, None]).astype(np.float64)
    return _finish(shape, raw[:n_train], Y[:n_train], raw[n_train:], Y[n_train:], n_train, n_test,
                   n_components, seed, True)


def read_xmc(path: str | Path) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Parse an Extreme Classification Repository data file.

    Returns:
        ``(features, labels)``: CSR matrices ``(n_points, n_features)`` and 0/1 ``(n_points, n_labels)``.

    Raises:
        InputError: a malformed header or line, or a feature index repeated within a line (the sparse
            matrix would silently add the values); the message names the file and line number.
    """
    path = Path(path)
    _check_text(path)
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().split()
        if not header:
            raise InputError(f"{path}, line 1: the file is empty; expected the header 'n_points n_features n_labels'.")
        if len(header) != 3 or not all(part.isdigit() for part in header):
            raise InputError(f"{path}: the first line must be 'n_points n_features n_labels', got {header!r}.")
        n_points, n_features, n_labels = map(int, header)
        f_rows, f_cols, f_vals, l_rows, l_cols = [], [], [], [], []
        row = -1  # a file with a header and no data lines has 0 points
        for row, line in enumerate(handle):
            parts = line.split()
            labels, pairs = (parts[0].split(","), parts[1:]) if parts and ":" not in parts[0] else ([], parts)
            try:
                for label in labels:
                    l_cols.append(int(label))
                    l_rows.append(row)
                for pair in pairs:
                    col, val = pair.split(":")
                    f_rows.append(row)
                    f_cols.append(int(col))
                    f_vals.append(float(val))
                    if not np.isfinite(f_vals[-1]):
                        raise ValueError(f"non-finite value {val!r}")
            except ValueError as error:
                raise InputError(
                    f"{path}, line {row + 2}: expected 'l1,l2,... feature:value ...' with integer labels ({error})."
                ) from error
            _check_indices(path, row, l_cols, f_cols, labels, pairs, n_labels, n_features)
    if row + 1 != n_points:
        raise InputError(f"{path}: header says {n_points} points but the file has {row + 1} data lines.")
    features = sp.csr_matrix((f_vals, (f_rows, f_cols)), shape=(n_points, n_features))
    labels = sp.csr_matrix((np.ones(len(l_rows)), (l_rows, l_cols)), shape=(n_points, n_labels))
    labels.data[:] = 1.0  # a label repeated on one line counts once
    return features, labels


def _check_text(path: Path) -> None:
    """An empty file or a byte that is not UTF-8 is an :class:`InputError` naming the line."""
    _files.check_text(path, "XMC file", "is this the repository's text file?")


def _check_indices(path: Path, row: int, l_cols: list, f_cols: list, labels: list, pairs: list, n_labels: int,
                   n_features: int) -> None:
    """The last line's label and feature indices lie within the header's counts; no feature index repeats."""
    for values, count, what in ((l_cols[len(l_cols) - len(labels):], n_labels, "label"),
                                (f_cols[len(f_cols) - len(pairs):], n_features, "feature")):
        bad = [value for value in values if not 0 <= value < count]
        if bad:
            raise InputError(f"{path}, line {row + 2}: {what} index {bad[0]} is outside [0, {count}) of the header.")
    features = f_cols[len(f_cols) - len(pairs):]
    if len(set(features)) != len(features):
        repeated = next(value for k, value in enumerate(features) if value in features[:k])
        raise InputError(f"{path}, line {row + 2}: feature index {repeated} appears {features.count(repeated)} times; "
                         "each feature may have one value per point (the file is corrupt or was concatenated).")


def read_split(path: str | Path, split: int = 0, n_points: int | None = None) -> np.ndarray:
    """0-based point indices of column ``split`` of a ``*_trSplit.txt`` / ``*_tstSplit.txt`` file (1-based).

    Raises:
        InputError: an empty or non-UTF-8 file, a non-integer entry, rows of different lengths, an index
            outside ``[1, n_points]``, or a point listed twice in the column (the message names the file and line).
    """
    return _split_lines(Path(path), split, n_points)[0]


def _split_lines(path: Path, split: int, n_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_split`'s indices and the file line of each."""
    _check_text(path)
    rows, lines = [], []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        lines.append(line_number)
        try:
            rows.append([int(value) for value in line.split()])
        except ValueError as error:
            raise InputError(f"{path}, line {line_number}: split indices must be integers ({error}).") from error
        if len(rows[-1]) != len(rows[0]):
            raise InputError(f"{path}, line {line_number}: {len(rows[-1])} columns, line 1 has {len(rows[0])}.")
        low = 1 if n_points is None else n_points
        if min(rows[-1]) < 1 or (n_points is not None and max(rows[-1]) > low):
            raise InputError(f"{path}, line {line_number}: index {rows[-1]} outside [1, {n_points or 'n_points'}] "
                             "(the split files are 1-based).")
    table = np.asarray(rows, dtype=np.int64)
    if not 0 <= split < table.shape[1]:
        raise InputError(f"{path} has {table.shape[1]} splits; split={split} is out of range.")
    indices, lines = table[:, split] - 1, np.asarray(lines)
    _, first, counts = np.unique(indices, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeat = np.sort(np.flatnonzero(np.isin(indices, indices[first[counts > 1]])))[:2]
        raise InputError(f"{path}, line {lines[repeat[1]]}: point {indices[repeat[1]] + 1} of split {split} is "
                         f"already listed on line {lines[repeat[0]]}; each point belongs to a split once.")
    return indices, lines


def _disjoint_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], paths: list[Path],
                     split: int) -> None:
    """Train and test points of one split do not overlap (a shared point would leak labels into the test)."""
    shared = np.flatnonzero(np.isin(test[0], train[0]))
    if len(shared):
        point = test[0][shared[0]]
        train_line = train[1][np.flatnonzero(train[0] == point)[0]]
        raise InputError(f"{paths[2]}, line {test[1][shared[0]]}: test point {point + 1} of split {split} is also a "
                         f"training point ({paths[1]}, line {train_line}); {len(shared)} test points overlap the "
                         "training split. Use the repository's split files unchanged.")


def load_xmc(
    name_or_folder: str | Path,
    *,
    split: int = 0,
    n_train: int = 5000,
    n_test: int = 500,
    n_components: int = 8,
    seed: int = 0,
) -> RankingData:
    """Load Mediamill or Delicious from the Extreme Classification Repository files.

    Args:
        name_or_folder: ``"mediamill"`` / ``"delicious"`` (looked up in the cache folder
            ``$VIF_DATA_DIR/<name>/``) or a folder holding the three files of one dataset.
        split: which of the repository's train/test splits (columns of the split files).
        n_train, n_test, n_components, seed: as in :func:`make_synthetic`.

    Raises:
        DatasetNotFoundError: the files are missing; the message says where to get them and where to put them.
        InputError: a malformed file (see :func:`read_xmc`, :func:`read_split`), or train and test points that
            overlap (the message names the test file's line and the training file's).
    """
    key = str(name_or_folder).lower()
    if key in XMC_FILES:
        folder = None
    else:
        folder = Path(name_or_folder)
        key = next((k for k, names in XMC_FILES.items() if (folder / names[0]).exists()), "mediamill")
    how_to_get = (
        f"Download {key.capitalize()}.zip from {_XMC_URL} (research use, see that page), unzip it and keep "
        f"{', '.join(XMC_FILES[key])}."
    )
    paths = [
        _files.locate(f"{key}/{name}", dataset=f"{key} (Extreme Classification Repository)", how_to_get=how_to_get,
                      path=None if folder is None else folder / name)
        for name in XMC_FILES[key]
    ]
    features, labels = read_xmc(paths[0])
    train, test = (_split_lines(paths[1], split, features.shape[0]), _split_lines(paths[2], split, features.shape[0]))
    _disjoint_splits(train, test, paths, split)
    train, test = train[0], test[0]
    return _finish(key, features[train], labels[train], features[test], labels[test], n_train, n_test,
                   n_components, seed, False)


def load(dataset: str | Path, *, n_train: int = 5000, n_test: int = 500, seed: int = 0) -> RankingData:
    """``"mediamill-like"`` / ``"delicious-like"`` (synthetic), ``"mediamill"`` / ``"delicious"`` or a folder."""
    if str(dataset) in SYNTHETIC:
        return make_synthetic(str(dataset), n_train=n_train, n_test=n_test, seed=seed)
    return load_xmc(dataset, n_train=n_train, n_test=n_test, seed=seed)
