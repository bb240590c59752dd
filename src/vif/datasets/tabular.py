"""Small tabular datasets that ship with scikit-learn, split and standardised reproducibly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ._files import check_fraction, check_seed

__all__ = ["Split", "breast_cancer"]


@dataclass(frozen=True)
class Split:
    """A seeded train/test split. ``X_*`` are ``(n, d)`` float64 tensors, ``y_*`` are ``(n,)``."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: list[str]


def breast_cancer(*, seed: int = 0, test_fraction: float = 0.2) -> Split:
    """Wisconsin diagnostic breast cancer data (Wolberg et al. 1995), as shipped in scikit-learn.

    569 tumours, 30 real-valued features of cell nuclei, label 1 = benign, 0 = malignant. Licence:
    CC BY 4.0 (UCI Machine Learning Repository). The split is seeded; features are standardised with
    the training split's mean and standard deviation.

    Args:
        seed: seed of the random permutation.
        test_fraction: share of rows held out as test data, in ``(0, 1)``.

    Raises:
        InputError: ``seed`` not a non-negative integer, ``test_fraction`` outside ``(0, 1)``, or a fraction
            that leaves the test or the training part empty.
    """
    from sklearn.datasets import load_breast_cancer

    seed, test_fraction = check_seed(seed), check_fraction(test_fraction, "test_fraction")
    data = load_breast_cancer()
    order = np.random.default_rng(seed).permutation(len(data.target))
    n_test = int(round(test_fraction * len(order)))
    if not 0 < n_test < len(order):
        raise InputError(f"test_fraction={test_fraction} holds out {n_test} of {len(order)} rows; both the test "
                         "and the training part need at least one.")
    test, train = order[:n_test], order[n_test:]
    mean, std = data.data[train].mean(0), data.data[train].std(0)
    features = torch.as_tensor((data.data - mean) / std, dtype=torch.float64)
    labels = torch.as_tensor(data.target, dtype=torch.float64)
    return Split(features[train], labels[train], features[test], labels[test], list(data.feature_names))
