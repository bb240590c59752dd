"""Correlation metrics against scipy, with constant columns and excluded entries handled explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from vif.errors import InputError
from vif.metrics import correlations


def test_matches_scipy_per_target_and_per_unit():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=(30, 4))
    predicted = actual + 0.3 * rng.normal(size=(30, 4))
    result = correlations(predicted, actual)
    expected = [pearsonr(predicted[:, t], actual[:, t])[0] for t in range(4)]
    assert np.allclose(result.pearson_each, expected, atol=1e-12)
    assert np.isclose(result.spearman, np.mean([spearmanr(predicted[:, t], actual[:, t])[0] for t in range(4)]))
    across_targets = correlations(predicted, actual, across="targets")
    assert across_targets.pearson_each.shape == (30,)
    assert np.isclose(across_targets.pearson_each[3], pearsonr(predicted[3], actual[3])[0])


def test_constant_columns_are_counted_not_averaged_as_nan():
    actual = np.column_stack([np.arange(5.0), np.zeros(5)])
    predicted = np.column_stack([np.arange(5.0) ** 2, np.ones(5)])
    result = correlations(predicted, actual)
    assert result.n_used == 1 and result.n_constant == 1
    assert np.isfinite(result.pearson) and np.isnan(result.pearson_each[1])


def test_excluded_entries_are_dropped_and_counted():
    actual = np.arange(6.0)
    predicted = actual.copy()
    predicted[0] = 100.0  # an undefined target, masked out
    valid = np.ones(6, dtype=bool)
    valid[0] = False
    result = correlations(predicted, actual, valid=valid)
    assert result.n_excluded == 1 and np.isclose(result.pearson, 1.0)


def test_bad_inputs():
    with pytest.raises(InputError, match="must match"):
        correlations(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match="valid="):
        correlations(np.array([1.0, np.nan, 2.0]), np.ones(3))
    with pytest.raises(InputError, match="across must be"):
        correlations(np.zeros(3), np.zeros(3), across="rows")


def test_roc_auc_matches_scikit_learn_with_ties_and_is_nan_for_one_class():
    from sklearn.metrics import roc_auc_score

    from vif.metrics import roc_auc

    rng = np.random.default_rng(0)
    labels = rng.random((40, 3)) < 0.3
    scores = np.round(rng.random((40, 3)) + labels, 1)  # rounded: many ties
    assert abs(roc_auc(torch.as_tensor(labels), torch.as_tensor(scores))
               - roc_auc_score(labels.ravel(), scores.ravel())) < 1e-12
    assert np.isnan(roc_auc(np.zeros(5, dtype=bool), np.arange(5.0)))
