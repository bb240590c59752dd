"""The stationarity check's scale cannot vanish (hinge-type losses), and its float32 rule agrees with vif.fit."""

from __future__ import annotations

import warnings

import pytest
import torch

import vif
from vif.errors import MaskIgnoredError, NotAMinimiserError

F64 = torch.float64


def _svm(n: int = 60):
    """A linear SVM with the squared hinge loss: most units sit off the margin and change nothing."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=generator, dtype=F64)
    noise = 0.3 * torch.randn(n, generator=generator, dtype=F64)
    y = torch.sign(X @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + noise)

    def svm(w, mask):
        return (mask * torch.clamp(1 - y * (X @ w), min=0).square()).sum() + 0.5 * w.square().sum()

    fitted = vif.fit.lbfgs(svm, torch.zeros(3, dtype=F64), torch.ones(n, dtype=F64), gtol=1e-9, max_iter=500)
    return svm, fitted, X, y


def test_a_hinge_loss_cannot_bypass_the_stationarity_check():
    svm, fitted, X, y = _svm()
    n = len(y)
    ones = torch.ones(n, dtype=F64)
    active = 1 - y * (X @ fitted) > 0
    assert 0 < int(active.sum()) < n // 2  # most single removals change nothing: the old median scale was 0
    far = fitted + 0.3 * torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    assert float(torch.func.grad(svm)(far, ones).abs().max()) > 10
    with pytest.raises(NotAMinimiserError, match=r"max\|grad L\(params, 1\)\| = 1\.875e\+01.*probe units whose removal "
                                                 r"changes the gradient"):
        vif.influence(svm, far, lambda w: w.sum(), n_units=n)
    # the fitted model passes; the estimates at the far point (which used to pass silently) are far off them
    estimate = vif.influence(svm, fitted, lambda w: w.sum(), n_units=n)
    with pytest.warns(vif.errors.UnconvergedWarning, match="probe units"):
        wrong = vif.influence(svm, far, lambda w: w.sum(), n_units=n, on_unconverged="warn")
    assert float((wrong - estimate).abs().max()) > 0.5 * float(estimate.abs().max())


def test_no_probed_removal_changes_the_gradient_then_the_all_units_change_is_the_scale():
    n = 100  # unit 1 lies between the 64 evenly spaced probes, and it alone carries loss
    weight = torch.nn.functional.one_hot(torch.tensor(1), n).to(F64)
    y = torch.full((n,), 3.0, dtype=F64)

    def one_active(b, mask):
        return 0.5 * (mask * weight * (b[0] - y).square()).sum() + 0.5 * b.square().sum()

    minimiser = torch.tensor([1.5], dtype=F64)
    assert vif.influence(one_active, minimiser, lambda b: b[0], n_units=n, units=[1]).shape == (1,)
    with pytest.raises(NotAMinimiserError, match=r"= 2\.000e-02 .*average change max\|g\(0\) - g\(1\)\| / n_units"):
        vif.influence(one_active, minimiser + 0.01, lambda b: b[0], n_units=n, units=[1])


def test_an_objective_no_removal_changes_passes_only_at_its_rounding_floor():
    def ignores_mask(b, mask):
        return 0.5 * (b - 2.0).square().sum() + 0 * mask.sum()

    with pytest.raises(NotAMinimiserError, match="rounding floor"):
        vif.influence(ignores_mask, torch.tensor([2.5], dtype=F64), lambda b: b[0], n_units=5)
    with pytest.raises(MaskIgnoredError):  # at its minimiser: the estimate's own error, as before
        vif.influence(ignores_mask, torch.tensor([2.0], dtype=F64), lambda b: b[0], n_units=5)


def _mean_logistic(n: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=generator, dtype=F64)
    y = (torch.rand(n, generator=generator, dtype=F64) < torch.sigmoid(X @ torch.linspace(-1, 1, 5, dtype=F64))).to(F64)
    X, y = X.to(dtype), y.to(dtype)

    def objective(w, mask):
        z = X @ w
        return (mask * (torch.nn.functional.softplus(z) - y * z)).sum() / n + 0.005 * w.square().sum()

    return objective, vif.fit.newton(objective, torch.zeros(5, dtype=dtype), torch.ones(n, dtype=dtype))


def test_a_float32_mean_loss_fitted_at_the_default_tolerance_passes_and_matches_float64():
    n = 1000
    objective32, w32 = _mean_logistic(n, torch.float32)
    objective64, w64 = _mean_logistic(n, F64)
    gradient = torch.func.grad(objective32)(w32, torch.ones(n, dtype=torch.float32))
    assert float(gradient.abs().max()) <= vif.fit.default_gtol("newton", torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate32 = vif.influence(objective32, w32, lambda w: w.sum(), n_units=n)
    estimate64 = vif.influence(objective64, w64, lambda w: w.sum(), n_units=n)
    assert float((estimate32.double() - estimate64).abs().max() / estimate64.abs().max()) < 2e-3
    # an explicit tolerance is the ratio rule alone, and a float32 point past the fit's tolerance still fails
    with pytest.raises(NotAMinimiserError, match=r"stationarity_tol = 1e-03"):
        vif.influence(objective32, w32 + 0.05, lambda w: w.sum(), n_units=n, stationarity_tol=1e-3)
    with pytest.raises(NotAMinimiserError, match=r"torch\.float32"):
        vif.influence(objective32, w32 + 0.05, lambda w: w.sum(), n_units=n)
