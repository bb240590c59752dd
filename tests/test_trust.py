"""Trust diagnostics: exact on a quadratic, equal to the estimate they judge, and right about which removals fail."""

from __future__ import annotations

import pytest
import torch

import vif
from vif.errors import InputError
from vif.trust import trust

N = 10
GENERATOR = torch.Generator().manual_seed(0)
X = torch.randn(N, 3, generator=GENERATOR, dtype=torch.float64)
Y = torch.randn(N, generator=GENERATOR, dtype=torch.float64)


def ridge(beta, mask):
    return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()


BETA = vif.fit.newton(ridge, torch.zeros(3, dtype=torch.float64), torch.ones(N, dtype=torch.float64))


def test_on_ridge_regression_ratio_newton_and_correction_match_their_closed_forms():
    """``L_i`` is quadratic with Hessian ``H_i = H - x_i x_i^T``: the step misses only by using ``H``."""
    report = trust(ridge, BETA, lambda beta: beta.sum(), n_units=N)
    H = X.T @ X + torch.eye(3, dtype=torch.float64)
    for i in range(N):
        D = X[i] * (Y[i] - X[i] @ BETA)  # g(1_{-i}) - g(1) = -grad of unit i's term
        H_i = H - torch.outer(X[i], X[i])
        delta = -torch.linalg.solve(H, D)
        ratio = (D @ delta + 0.5 * delta @ H_i @ delta) / (D @ delta + 0.5 * delta @ H @ delta)
        second = -torch.linalg.solve(H, D + H_i @ delta)
        assert float(report.ratio[i]) == pytest.approx(float(ratio), rel=1e-9)
        assert float(report.newton[i]) == pytest.approx(float(second.norm() / delta.norm()), rel=1e-9)
        assert float(report.correction[i]) == pytest.approx(float(second.sum()), rel=1e-9, abs=1e-14)
        assert float(report.estimate[i]) == pytest.approx(float(delta.sum()), rel=1e-9)


def test_the_estimate_in_the_report_is_the_influence_and_diagnostics_true_returns_both():
    def target(beta):
        return torch.stack([beta.square().sum(), beta[0]])

    estimate, report = vif.influence(ridge, BETA, target, n_units=N, diagnostics=True)
    assert torch.allclose(estimate, vif.influence(ridge, BETA, target, n_units=N), atol=1e-14)
    assert torch.allclose(report.estimate, estimate, atol=1e-12) and report.risk.shape == (N, 2)
    with pytest.raises(InputError, match="diagnostics=True checks the VIF removal step"):
        vif.influence(ridge, BETA, target, n_units=N, method="if", diagnostics=True)
    with pytest.raises(InputError, match="threshold must be a positive number"):
        trust(ridge, BETA, target, n_units=N, threshold=0)


def test_ratio_and_newton_against_closed_forms_on_a_quartic():
    def quartic(theta, mask):  # L(theta, m) = sum_i m_i (theta - a_i)^4 / 4 + theta^2 / 2
        a = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
        return (mask * (theta - a) ** 4).sum() / 4 + 0.5 * theta.square().sum()

    theta = vif.fit.newton(quartic, torch.zeros(1, dtype=torch.float64), torch.ones(N, dtype=torch.float64))
    report = trust(quartic, theta, n_units=N, units=[N - 1])
    mask = torch.ones(N, dtype=torch.float64)
    mask[N - 1] = 0.0
    grad = torch.func.grad(quartic)
    hessian = float(torch.func.hessian(lambda t: quartic(t, torch.ones(N, dtype=torch.float64)))(theta))
    d = float(grad(theta, mask))
    delta = -d / hessian
    predicted = d * delta - 0.5 * d * delta
    actual = float(quartic(theta + delta, mask) - quartic(theta, mask))
    assert float(report.ratio[0]) == pytest.approx(actual / predicted, rel=1e-10)
    step = float(grad(theta + delta, mask)) / hessian
    assert float(report.newton[0]) == pytest.approx(abs(step / delta), rel=1e-10)


def test_on_an_mlp_the_flagged_removals_are_the_ones_the_estimate_misses():
    from vif.experiments.trust import mlp

    task = mlp(n_train=40, n_test=20, seed=0)
    params = task.fit()

    def test_loss(p):
        return task.target(p).mean()

    report = trust(task, params, test_loss)
    order = torch.argsort(report.risk)
    chosen = torch.cat([order[:4], order[-4:]]).tolist()  # the 4 most and 4 least trusted removals
    actual = vif.leave_one_out(task, params, test_loss, units=chosen, progress=False)
    errors = (report.estimate[chosen] - actual).abs()
    assert float(errors[4:].min()) > float(errors[:4].max())
    assert bool(report.unreliable[order[-1]]) and not bool(report.unreliable[order[0]])
