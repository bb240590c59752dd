"""Issue 21, class 2: a leave-one-out refit is truth only if it is a minimiser.

Unconverged refits (gradient above the task's gtol, or above the stationarity rule without one), a fit that
returns its start point, and cached entries recorded as unconverged must never come back as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import vif
from ridge_data import ridge
from vif.errors import CacheWarning, RefitError, RefitWarning

N, D = 12, 3
X, Y, objective, exact = ridge(N, D, seed=3)
X[0], Y[0] = 0.0, 0.0  # unit 0 contributes nothing: removing it changes no gradient

BETA = exact(torch.ones(N, dtype=torch.float64))


def target(beta):
    return torch.stack([beta.sum(), beta[0]])


def by_hand(units):
    """The exact changes, deleting each row (independent of the harness)."""
    rows = []
    for unit in units:
        keep = torch.arange(N) != unit
        beta = torch.linalg.solve(X[keep].T @ X[keep] + torch.eye(D, dtype=X.dtype), X[keep].T @ Y[keep])
        rows.append(target(beta) - target(BETA))
    return torch.stack(rows)


@dataclass
class Ridge:
    """A task whose fit stops early (one gradient step) without unit 5, and says its gtol."""

    gtol: float = 1e-9
    n_units: int = N

    def objective(self, beta, mask):
        return objective(beta, mask)

    def fit(self, mask=None, init=None):
        if mask is not None and mask[5] == 0:  # "converges" after a single, short gradient step
            g = torch.func.grad(objective)(init, mask)
            return init - 1e-3 * g
        return exact(mask)


def test_a_refit_above_the_tasks_gtol_raises_naming_the_unit_and_its_gradient():
    with pytest.raises(RefitError, match=r"without unit 5 failed \(not a minimiser: max\|grad L\(refit, mask\)\| = "
                                         r"\d\.\d+e-0\d is above the task's gtol = 1\.0e-09"):
        vif.leave_one_out(Ridge(), BETA, target, progress=False)


def test_with_skip_an_unconverged_refit_is_marked_failed_and_excluded(tmp_path):
    with pytest.warns(RefitWarning, match=r"1 refit\(s\) failed.*\[5\]: not a minimiser"):
        changes, failed = vif.leave_one_out(Ridge(), BETA, target, progress=False, on_error="skip", cache_dir=tmp_path)
    assert failed.tolist() == [unit == 5 for unit in range(N)]
    assert torch.isnan(changes[5]).all()
    assert torch.allclose(changes[~failed], by_hand([u for u in range(N) if u != 5]), atol=1e-10)
    assert not (next(tmp_path.glob("loo-*")) / "unit-000005.pt").exists()  # never cached as truth


def test_a_fit_that_returns_its_start_point_is_an_error_even_without_gtol():
    def lazy(mask, init):
        return init  # warm start: "refitted" at theta_hat

    with pytest.raises(RefitError, match=r"without unit 1 failed \(the fit returned its start point theta_hat "
                                         r"unchanged \(it did nothing\).*stationarity_tol = 1e-04"):
        vif.leave_one_out(lazy, BETA, target, n_units=N, objective=objective, units=[1], progress=False)
    # removing unit 0 changes nothing: theta_hat is its exact refit, and is accepted
    unchanged = vif.leave_one_out(lazy, BETA, target, n_units=N, objective=objective, units=[0], progress=False)
    assert torch.equal(unchanged, torch.zeros(1, 2, dtype=torch.float64))
    assert torch.allclose(by_hand([0]), unchanged, atol=1e-12)


def test_without_an_objective_a_refit_equal_to_theta_hat_warns():
    with pytest.warns(RefitWarning, match="returned theta_hat itself for 2 removal.*Pass objective="):
        vif.leave_one_out(lambda mask, init: init, BETA, target, n_units=N, units=[1, 2], progress=False)


def test_a_loose_bare_fit_fails_the_stationarity_rule_and_a_tight_one_passes():
    def loose(mask, init):  # unit 3: a few gradient steps, stopped far from the minimum
        if mask[3] == 0:
            for _ in range(3):
                init = init - 0.01 * torch.func.grad(objective)(init, mask)
            return init
        return exact(mask)

    with pytest.raises(RefitError, match=r"without unit 3 failed \(not a minimiser.*typical gradient change"):
        vif.leave_one_out(loose, BETA, target, n_units=N, objective=objective, progress=False)
    tight = vif.leave_one_out(lambda mask, init: vif.fit.newton(objective, init, mask, gtol=1e-12), BETA, target,
                              n_units=N, objective=objective, progress=False)
    assert torch.allclose(tight, by_hand(range(N)), atol=1e-10)


def test_a_cached_entry_recorded_as_unconverged_is_recomputed_not_returned(tmp_path):
    options = dict(n_units=N, objective=objective, progress=False, cache_dir=tmp_path)
    vif.leave_one_out(exact, BETA, target, **options)
    path = next(tmp_path.glob("loo-*/unit-000004.pt"))
    entry = torch.load(path, weights_only=True)
    entry["theta"] = entry["theta"] + 1.0  # a wrong refit ...
    entry["meta"]["converged"] = False  # ... that its metadata says did not converge
    torch.save(entry, path)
    with pytest.warns(CacheWarning, match=r"unit-000004\.pt is unusable .*did not converge"):
        again = vif.leave_one_out(exact, BETA, target, **options)
    assert torch.allclose(again, by_hand(range(N)), atol=1e-10)


def test_the_packages_tasks_reach_their_gtol_warm_and_cold():
    """No false alarm on the package's own refits (the chapters' tasks raise ConvergenceError themselves)."""
    from vif.tasks.cox import CoxRegression
    from vif.tasks.logistic import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    labels = (torch.rand(40, generator=generator, dtype=torch.float64) < torch.sigmoid(features[:, 0])).double()
    time = torch.rand(40, generator=generator, dtype=torch.float64) + 0.1
    event = (torch.rand(40, generator=generator) < 0.7).double()
    for task in (LogisticRegression(features, labels, l2=1.0), CoxRegression(features, time, event, l2=0.1)):
        params = task.fit()
        for warm in (True, False):
            changes = vif.leave_one_out(task, params, lambda p: flat(p).sum(), units=range(0, 40, 5),
                                        warm_start=warm, progress=False)
            assert torch.isfinite(changes).all()


def flat(params):
    return vif.params.flatten(params)[0]


def test_every_task_class_passes_the_refit_checks_warm_and_cold():
    """The small instance of every task class (tests/test_architecture.py): no refit is refused, so the
    chapters' refits (the same fits, at their gtol) are not either."""
    from test_architecture import _small_data, _task_instances

    for cls, build in _task_instances().items():
        task = build(_small_data())
        params = task.fit()
        for warm in (True, False):
            changes = vif.leave_one_out(task, params, lambda p: flat(p)[:2], units=[1, 2], warm_start=warm,
                                        progress=False)
            assert torch.isfinite(changes).all(), cls.__qualname__


def test_a_tasks_fit_method_passed_alone_is_judged_by_its_tasks_gtol():
    task = Ridge(gtol=1.0)  # a loose, stated tolerance: the one-step refit of unit 5 is within it
    g5 = vif.fit.gradient_norm(objective, task.fit(vif.params.removal_mask(N, 5, BETA), BETA),
                               vif.params.removal_mask(N, 5, BETA))
    assert 1e-4 < g5 < 1.0  # above the stationarity rule, within the task's gtol
    changes = vif.leave_one_out(task.fit, BETA, target, n_units=N, objective=task.objective, units=[5],
                                progress=False)
    assert torch.isfinite(changes).all()
    with pytest.raises(RefitError, match="unit 5 failed.*task's gtol = 1.0e-09"):
        vif.leave_one_out(Ridge().fit, BETA, target, n_units=N, objective=objective, units=[5], progress=False)


def test_float32_refits_at_vif_fits_default_tolerance_pass_as_theta_hat_does():
    """The refit rule is vif.checks' rule: what it accepts for theta_hat in float32 it accepts for a refit."""
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(400, 5, generator=generator, dtype=torch.float32)
    response = features @ torch.ones(5, dtype=torch.float32) + torch.randn(400, generator=generator,
                                                                           dtype=torch.float32)

    def mean_loss(beta, mask):
        return (mask * (response - features @ beta).square()).sum() / mask.sum() + 1e-3 * beta.square().sum()

    def refit(mask, init):
        return vif.fit.newton(mean_loss, init if init is not None else torch.zeros(5, dtype=torch.float32), mask)

    beta = refit(torch.ones(400, dtype=torch.float32), None)  # explicit: another module sets float64 default
    changes = vif.leave_one_out(refit, beta, lambda b: b.sum(), n_units=400, objective=mean_loss,
                                units=range(0, 400, 40), progress=False)
    assert torch.isfinite(changes).all()
