"""The breast-cancer loader refuses fractions and seeds that would give a wrong or empty split (issue 21, class 7)."""

from __future__ import annotations

import pytest

from vif.datasets.tabular import breast_cancer
from vif.errors import InputError


@pytest.mark.parametrize("fraction", [-0.1, 0.0, 1.0, 1.5, float("nan"), "0.2", True])
def test_test_fraction_outside_the_unit_interval_is_refused(fraction):
    with pytest.raises(InputError, match=r"test_fraction must (lie in|be a number in) \(0, 1\).*got"):
        breast_cancer(test_fraction=fraction)


def test_a_fraction_that_empties_a_part_is_refused():
    with pytest.raises(InputError, match=r"test_fraction=0.0001 holds out 0 of 569 rows"):
        breast_cancer(test_fraction=1e-4)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, False])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(InputError, match="seed must be a non-negative integer, got"):
        breast_cancer(seed=seed)


def test_a_valid_split_has_the_asked_sizes():
    split = breast_cancer(seed=3, test_fraction=0.25)
    assert (len(split.y_test), len(split.y_train)) == (142, 427)
