"""A task's gradient-difference hooks are spot-checked against autodiff once per Problem."""

from __future__ import annotations

import pytest
import torch

import vif
from vif.errors import InputError
from vif.tasks.cox import CoxRegression

F64 = torch.float64


def _data(n: int = 40):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=generator, dtype=F64)
    time = torch.rand(n, generator=generator, dtype=F64) + 0.1
    event = (torch.rand(n, generator=generator) < 0.7).to(F64)
    return X, time, event


class FlippedDense(CoxRegression):
    """The dense hook with its sign flipped (and no sparse hook, so VIF would use the dense one)."""

    mask_change_gradient_differences = None

    def mask_gradient_differences(self, beta, masks):
        return -super().mask_gradient_differences(beta, masks)


class FlippedSparse(CoxRegression):
    def mask_change_gradient_differences(self, beta, rows, units, values, k):
        return -super().mask_change_gradient_differences(beta, rows, units, values, k)


class WrongShape(CoxRegression):
    def mask_gradient_differences(self, beta, masks):
        return super().mask_gradient_differences(beta, masks)[:, :2]


def test_the_shipped_cox_hooks_pass_and_agree_with_autodiff():
    task = CoxRegression(*_data(), l2=0.1)
    beta = task.fit()
    bare = vif.influence(task.objective, beta, lambda b: b.sum(), n_units=task.n_units)  # autodiff only
    torch.testing.assert_close(vif.influence(task, beta, lambda b: b.sum()), bare, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("task_class", "hook"), [(FlippedDense, "mask_gradient_differences"),
                                                  (FlippedSparse, "mask_change_gradient_differences")])
def test_a_sign_flipped_hook_is_refused_naming_the_hook(task_class, hook):
    task = task_class(*_data(), l2=0.1)
    beta = CoxRegression(*_data(), l2=0.1).fit()
    with pytest.raises(InputError, match=rf"{hook} hook disagrees with autodiff .*unit\(s\) \[13, 26\].*twice it"):
        vif.influence(task, beta, lambda b: b.sum())
    with pytest.raises(InputError, match=hook):
        vif.trust.trust(task, beta, lambda b: b.sum())


def test_a_hook_of_the_wrong_shape_is_refused():
    task = WrongShape(*_data(), l2=0.1)
    with pytest.raises(InputError, match=r"returned \(2, 2\) for 2 masks; expected \(2, 3\)"):
        vif.influence(task, task.fit(), lambda b: b.sum())
