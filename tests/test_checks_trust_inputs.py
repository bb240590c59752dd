"""trust keeps going past a step outside the domain and keeps a scale; in-place writes and dtypes are named."""

from __future__ import annotations

import pytest
import torch

import vif
from vif.errors import InputError

F64 = torch.float64
N = 8
X = torch.linspace(-1, 1, N, dtype=F64)[:, None] * torch.tensor([[1.0, 0.5]], dtype=F64)
Y = torch.linspace(0, 2, N, dtype=F64)


def ridge(beta, mask):
    return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()


BETA = vif.fit.newton(ridge, torch.zeros(2, dtype=F64), torch.ones(N, dtype=F64))
OUTLIER = torch.tensor([0.0] * 7 + [-20.0], dtype=F64)


def barrier(b, mask):
    """Defined for b < -1 only; removing the outlier (unit 7) steps past the barrier."""
    return 0.5 * (mask * (b[0] - OUTLIER).square()).sum() - 0.01 * torch.log(-1 - b[0])


def test_a_step_outside_the_domain_marks_its_unit_and_keeps_the_estimates():
    b = vif.fit.newton(barrier, torch.full((1,), -3.0, dtype=F64), torch.ones(N, dtype=F64))
    estimate = vif.influence(barrier, b, lambda p: p[0], n_units=N)
    assert float(b[0] + estimate[7]) > -1  # the step of unit 7 leaves the domain
    report = vif.trust.trust(barrier, b, lambda p: p[0], n_units=N)
    assert torch.isnan(report.ratio[7]) and torch.isinf(report.newton[7]) and report.flagged[7]
    assert torch.isnan(report.correction[7]) and report.unreliable[7]
    assert torch.isfinite(report.ratio[:7]).all() and not report.flagged[:7].any() and not report.unreliable[:7].any()
    torch.testing.assert_close(report.estimate, estimate)
    with_diagnostics, diagnostics = vif.influence(barrier, b, lambda p: p[0], n_units=N, diagnostics=True)
    torch.testing.assert_close(with_diagnostics, estimate)
    assert diagnostics.flagged.tolist() == [False] * 7 + [True]


def test_the_typical_effect_ignores_removals_that_change_nothing():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=generator, dtype=F64)
    noise = 0.3 * torch.randn(60, generator=generator, dtype=F64)
    y = torch.sign(x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + noise)

    def svm(w, mask):
        return (mask * torch.clamp(1 - y * (x @ w), min=0).square()).sum() + 0.5 * w.square().sum()

    w = vif.fit.lbfgs(svm, torch.zeros(3, dtype=F64), torch.ones(60, dtype=F64), gtol=1e-9, max_iter=500)
    report = vif.trust.trust(svm, w, lambda p: p.sum(), n_units=60)
    moving = report.estimate.abs() > 1e-12
    assert int(moving.sum()) < 30  # more than half the effects are (rounding-level) zero
    assert float(report.risk.max()) < 10 and int(report.unreliable.sum()) < int(moving.sum())
    typical = report.estimate[moving].abs().median()
    torch.testing.assert_close(report.risk, report.correction.abs() / typical)
    torch.testing.assert_close(vif.trust.typical_effect(report.estimate[:, None]), typical.reshape(1))


def test_an_objective_that_writes_into_params_is_named_and_leaves_them_untouched():
    def shifts(beta, mask):
        beta[0] += 1
        return ridge(beta, mask)

    params = BETA.clone()
    with pytest.raises(InputError, match=r"modified its params argument in place \(max change 1\.000e\+00\).*\+="):
        vif.influence(shifts, params, lambda b: b.sum(), n_units=N)
    assert torch.equal(params, BETA)


def test_an_objective_that_writes_into_its_captured_mask_is_named():
    def scales(beta, mask):
        mask.mul_(1.0)
        return ridge(beta, mask)

    for call in (lambda: vif.influence(scales, BETA, lambda b: b.sum(), n_units=N),
                 lambda: vif.trust.trust(scales, BETA, n_units=N)):
        with pytest.raises(InputError, match=r"in place.*never modify mask or params in place"):
            call()


def test_a_float32_target_of_float64_params():
    x32 = X.to(torch.float32)
    with pytest.raises(InputError, match=r"target failed on a dtype mismatch: params are torch\.float64.*X\.to\(torch"):
        vif.influence(ridge, BETA, lambda b: (x32 @ b).sum(), n_units=N)
    with pytest.raises(InputError, match="dtype mismatch"):
        vif.influence(ridge, BETA, lambda b, m: (m * (x32 @ b)).sum(), n_units=N)
    # a float32 value is cast: float64 results equal to the float64 target's to float32 rounding
    result = vif.influence(ridge, BETA, lambda b, m: (m.float() * (x32 @ b.float())).sum(), n_units=N)
    reference = vif.influence(ridge, BETA, lambda b, m: (m * (X @ b)).sum(), n_units=N)
    assert result.dtype == F64
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-6)
