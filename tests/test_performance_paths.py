"""Fast paths against their references: the closed-form Cox gradient differences against autodiff, and the
mask-linear route (VIF == IF exactly) against the plain VIF path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad

import vif
from survival_data import tied_data
from vif.errors import InputError, MaskError
from vif.problem import Problem, resolve_task
from vif.tasks import cox
from vif.tasks.logistic import LogisticRegression


def _tied_data(n: int = 40, p: int = 3, seed: int = 0):
    return tied_data(n, p, seed, censored_first=True)


def _autodiff_differences(task: cox.CoxRegression, beta: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    gradient = grad(task.objective)
    return torch.stack([gradient(beta, mask) for mask in masks]) - gradient(beta, torch.ones_like(masks[0]))


def _edge_masks(time: np.ndarray, event: np.ndarray, last: int) -> torch.Tensor:
    n, rng = len(time), np.random.default_rng(1)
    first_event_group = time == time[np.flatnonzero(event == 1)[0]]
    rows = [np.eye(n)[i] for i in range(n)]  # every single removal (ties, last at risk, never at risk)
    emptied = np.ones(n)
    emptied[first_event_group] = 0.0
    emptied[last] = 0.0  # a whole tie group and the last risk set emptied
    tied_events = np.flatnonzero((event == 1) & (time == time[np.flatnonzero(event == 1)[2]]))
    partial = np.ones(n)
    partial[tied_events[:1]] = 0.0  # one event of a tie group: the Efron group shrinks
    rows = [1.0 - row for row in rows] + [emptied, partial, rng.random(n), rng.choice([0.0, 0.5, 1.0, 2.0], size=n)]
    return torch.tensor(np.stack(rows))


@pytest.mark.parametrize("l2", [0.0, 0.7])
@pytest.mark.parametrize("ties", cox.TIES)
def test_cox_closed_form_equals_autodiff_for_any_masks(ties, l2):
    x, time, event, last = _tied_data()
    task = cox.CoxRegression(x, time, event, ties=ties, l2=l2)
    masks = _edge_masks(time, event, last)
    for beta in (torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64), torch.tensor([4.0, -3.0, 2.5], dtype=torch.float64)):
        fast = task.mask_gradient_differences(beta, masks)
        torch.testing.assert_close(fast, _autodiff_differences(task, beta, masks), rtol=0, atol=1e-10)


@pytest.mark.parametrize("ties", cox.TIES)
def test_cox_sparse_form_equals_dense(ties):
    x, time, event, last = _tied_data()
    task = cox.CoxRegression(x, time, event, ties=ties)
    beta = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)
    masks = _edge_masks(time, event, last)
    rows, units = torch.nonzero(masks != 1, as_tuple=True)
    sparse = task.mask_change_gradient_differences(beta, rows, units, masks[rows, units], len(masks))
    torch.testing.assert_close(sparse, task.mask_gradient_differences(beta, masks), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [1.0, 0.3])
@pytest.mark.parametrize("ties", cox.TIES)
def test_cox_influence_with_the_fast_path_equals_autodiff(ties, eps):
    x, time, event, last = _tied_data(n=60, seed=3)
    task = cox.CoxRegression(x, time, event, ties=ties, l2=0.5)
    beta = task.fit()
    target = cox.relative_hazard(x[:5])
    groups = [np.flatnonzero(time == value) for value in np.unique(time)] + [[last, 1, 2]]
    for selection in ({}, {"groups": groups}, {"units": [last, 0, 7]}):
        fast = vif.influence(task, beta, target, eps=eps, chunk_size=16, **selection)
        reference = vif.influence(task.objective, beta, target, n_units=task.n_units, eps=eps, chunk_size=16, **selection)
        torch.testing.assert_close(fast, reference, rtol=0, atol=1e-10)


def test_cox_fast_path_rejects_a_bad_mask_block():
    x, time, event, _ = _tied_data()
    task = cox.CoxRegression(x, time, event)
    with pytest.raises(MaskError, match="shape"):
        task.mask_gradient_differences(torch.zeros(3, dtype=torch.float64), torch.ones(2, 7, dtype=torch.float64))


def _logistic(n: int = 80, d: int = 4, seed: int = 0) -> tuple[LogisticRegression, dict]:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64) > 0).to(torch.float64)
    task = LogisticRegression(X, y, l2=1.0)
    return task, task.fit()


def test_mask_linear_objective_routes_vif_to_the_if_path():
    task, params = _logistic()
    problem = Problem(task.objective, params, task.n_units, vectorize=True, hook=resolve_task(task, None)[2])
    problem.prefer_mask_jacobian("vif", 500)
    assert problem.mask_linear and problem.mask_jacobian is not None
    target = lambda p: p["weight"]  # noqa: E731
    routed = vif.influence(task, params, target)
    plain = vif.influence(task.objective, params, target, n_units=task.n_units, units=range(task.n_units))
    torch.testing.assert_close(routed, plain, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(routed, vif.influence(task, params, target, method="if"), rtol=1e-12, atol=1e-14)


def test_bare_linear_objective_is_detected_and_cox_is_not():
    task, params = _logistic()
    problem = Problem(task.objective, params, task.n_units, vectorize=True)
    problem.prefer_mask_jacobian("vif", 100)
    assert problem.mask_linear
    x, time, event, _ = _tied_data()
    cox_task = cox.CoxRegression(x, time, event)
    bare = Problem(cox_task.objective, torch.zeros(3, dtype=torch.float64), cox_task.n_units, vectorize=True)
    bare.prefer_mask_jacobian("vif", 100)
    assert not bare.mask_linear


def test_a_wrong_mask_linear_declaration_is_named():
    x, time, event, _ = _tied_data()

    class Declared(cox.CoxRegression):
        mask_linear = True

    task = Declared(x, time, event)
    with pytest.raises(InputError, match="mask_linear = True"):
        vif.influence(task, torch.zeros(3, dtype=torch.float64), lambda beta: beta.sum(), on_unconverged="warn")


@pytest.mark.parametrize("eps", [1.0, 0.3])
def test_efron_power_series_path_equals_autodiff_on_large_risk_sets(eps):
    from vif.tasks import cox_gradients

    x, time, event, _ = _tied_data(n=400, seed=5)
    task = cox.CoxRegression(x, time, event, ties="efron")
    beta = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)
    masks = 1.0 - eps * torch.eye(400, dtype=torch.float64)
    sums = task._gradients._at(beta)
    ratio = eps * sums["e"].max() / sums["smallest"][:5].min()
    assert ratio < cox_gradients.SERIES_RATIO  # the early groups take the series path
    fast = task.mask_gradient_differences(beta, masks)
    reference = torch.func.vmap(lambda m: grad(task.objective)(beta, m))(masks) - grad(task.objective)(beta, masks[0] * 0 + 1)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-10)
