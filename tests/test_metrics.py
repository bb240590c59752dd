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


# ---- issue 21: skipped refits are scoreable (class 9), swapped roc_auc arguments are refused (class 7) --------


def test_nan_entries_outside_valid_are_ignored_and_inside_valid_are_named():
    rng = np.random.default_rng(1)
    actual = rng.normal(size=(20, 3))
    predicted = actual + 0.2 * rng.normal(size=(20, 3))
    failed = np.zeros(20, dtype=bool)
    failed[[4, 11]] = True
    with_nan = actual.copy()
    with_nan[failed] = np.nan  # leave_one_out(..., on_error="skip") rows
    result = correlations(predicted, with_nan, valid=~failed)
    expected = [pearsonr(predicted[~failed, t], actual[~failed, t])[0] for t in range(3)]
    assert np.allclose(result.pearson_each, expected, atol=1e-12) and result.n_excluded == 6
    across = correlations(torch.as_tensor(predicted), torch.as_tensor(with_nan), valid=torch.as_tensor(~failed),
                          across="targets")
    assert np.isnan(across.pearson_each[4]) and np.isclose(across.pearson_each[0], pearsonr(predicted[0], actual[0])[0])
    one_column = correlations(predicted[:, 0], with_nan[:, 0], valid=~failed)
    assert np.isclose(one_column.pearson, expected[0])
    failed[4] = False  # row 4 is NaN but marked valid
    with pytest.raises(InputError, match=r"actual has 3 NaN or inf entries outside valid= \(first in row 4\)"):
        correlations(predicted, with_nan, valid=~failed)
    with pytest.raises(InputError, match=r"valid has shape \(7,\); it must match .* or have one entry per row"):
        correlations(predicted, actual, valid=np.ones(7, dtype=bool))


def test_roc_auc_refuses_scores_passed_as_labels():
    from vif.metrics import roc_auc

    rng = np.random.default_rng(2)
    labels = rng.random(30) < 0.4
    scores = rng.normal(size=30) + labels
    assert 0.5 < roc_auc(labels, scores) <= 1.0
    assert roc_auc(labels.astype(float), scores) == roc_auc(labels, scores)  # 0/1 floats are labels too
    with pytest.raises(InputError, match=r"labels \(the first argument\) must be bool or 0/1.*scores passed first"):
        roc_auc(scores, labels)
    with pytest.raises(InputError, match=r"labels \(the first argument\) has NaN"):
        roc_auc(np.array([0.0, np.nan, 1.0]), np.arange(3.0))
