"""Fits with no finite minimiser (issue 21, class 3): run-off is detected in ``vif.fit.newton``, in ``fit`` and in LOO.

Truth: a Cox model whose binary covariate has exactly one event in its level 1 has a finite maximiser (the
event is there); removing that patient leaves the level with no events, and the partial likelihood then
increases monotonically in the coefficient (Bryson and Johnson 1981's monotone likelihood). Logistic
regression without penalty on linearly separable labels has no finite minimiser either.
"""

from __future__ import annotations

import pytest
import torch

import vif
from vif._optimisers import run_off
from vif.errors import NoFiniteMinimiserError, RefitError
from vif.fit import newton
from vif.tasks import cox, logistic


def _one_event_level(n: int = 60, seed: int = 0):
    """Covariates ``(n, 3)`` (the last binary), times, events, and the one patient with an event in level 1."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    level = (torch.rand(n, generator=generator, dtype=torch.float64) < 0.5).double()
    time = torch.rand(n, generator=generator, dtype=torch.float64) + 0.1
    event = (torch.rand(n, generator=generator, dtype=torch.float64) < 0.6).double()
    events_in_level = torch.nonzero((level == 1) & (event == 1)).squeeze(1)
    event[events_in_level[1:]] = 0.0
    return torch.cat([x, level[:, None]], 1), time, event, int(events_in_level[0])


@pytest.mark.parametrize("ties", cox.TIES)
def test_cox_refit_with_no_event_in_a_level_raises(ties):
    x, time, event, unit = _one_event_level()
    task = cox.CoxRegression(x, time, event, ties=ties)
    beta_hat = task.fit()  # well posed: the level has its event
    assert beta_hat.abs().max() < 5
    mask = torch.ones(len(time), dtype=torch.float64)
    mask[unit] = 0.0
    with pytest.raises(NoFiniteMinimiserError, match=r"^no finite minimiser: coefficient 2 runs off.*no events"):
        task.fit(mask, beta_hat)
    with pytest.raises(NoFiniteMinimiserError, match=r"^no finite minimiser: coefficient 2"):
        task.fit(mask)  # cold start too
    # the same removal from data that keep a second event in the level is well posed
    event[torch.nonzero((x[:, 2] == 1) & (event == 0)).squeeze(1)[0]] = 1.0
    cox.CoxRegression(x, time, event, ties=ties).fit(mask, beta_hat)


def test_loo_names_the_unit_with_no_finite_minimiser():
    x, time, event, unit = _one_event_level()
    task = cox.CoxRegression(x, time, event, ties="efron")
    beta_hat = task.fit()
    others = [u for u in range(10) if u != unit][:3]
    changes = vif.leave_one_out(task, beta_hat, lambda beta: beta, units=others, progress=False)
    assert torch.isfinite(changes).all()
    with pytest.raises(RefitError, match=rf"without unit {unit} failed \(.*no finite minimiser: coefficient 2"):
        vif.leave_one_out(task, beta_hat, lambda beta: beta, units=[unit] + others, progress=False)
    # a ridge penalty makes the minimiser finite
    ridge = cox.CoxRegression(x, time, event, ties="efron", l2=1.0)
    changes = vif.leave_one_out(ridge, ridge.fit(), lambda beta: beta, units=[unit], progress=False)
    assert torch.isfinite(changes).all()


def test_logistic_separable_without_penalty_raises():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    y = (x[:, 0] > 0).double()
    with pytest.raises(NoFiniteMinimiserError, match=r"^no finite minimiser: coefficient 0 .*separable"):
        logistic.fit(x, y, l2=0.0)
    with pytest.raises(NoFiniteMinimiserError, match=r"^no finite minimiser"):
        logistic.LogisticRegression(x, y, l2=0.0).fit()
    assert logistic.fit(x, y, l2=1.0)["weight"].abs().max() < 20


def test_no_false_alarm_on_a_large_finite_minimiser():
    """Overlapping labels in a thin band: Newton from zero takes long aligned steps, then contracts (finite optimum)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(200, 1, generator=generator, dtype=torch.float64)
    y = (x[:, 0] > 0).double()
    y[x[:, 0] == torch.sort(x[y == 1, 0])[0][1]] = 0.0  # the second-smallest positive: no separating threshold
    params = logistic.fit(x, y, l2=0.0)
    assert 100 < float(params["weight"][0]) < 400  # far from the start, yet finite
    objective = logistic.objective(x, y, l2=0.0)
    assert vif.fit.gradient_norm(objective, params, torch.ones(200, dtype=torch.float64)) <= 1e-10


def test_no_false_alarm_on_quadratics_and_a_far_start():
    matrix = torch.tensor([[2.0, 0.01], [0.01, 1e-4]], dtype=torch.float64)  # ill-conditioned but finite

    def objective(theta, mask):
        return 0.5 * theta @ matrix @ theta + torch.log(torch.cosh(theta - 3.0)).sum() * mask.sum()

    theta = newton(objective, torch.full((2,), 40.0, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert torch.isfinite(theta).all()


def test_run_off_reads_the_steps():
    theta = torch.tensor([0.1, 20.0], dtype=torch.float64)
    steady = [torch.tensor([1e-6, 1.0], dtype=torch.float64)] * 3
    assert run_off(steady, theta) == 1
    contracting = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1e-2]), torch.tensor([0.0, 1e-5])]
    assert run_off([step.double() for step in contracting], theta) is None
    turning = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    assert run_off([step.double() for step in turning], theta) is None
    assert run_off(steady[:2], theta) is None
    tiny = [torch.tensor([0.0, 1e-6], dtype=torch.float64)] * 3
    assert run_off(tiny, theta) is None
