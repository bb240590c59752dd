"""Every bad input gets a precise vif exception that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

import vif
from vif.errors import (
    ConvergenceError,
    InputError,
    MaskError,
    MaskIgnoredError,
    NonFiniteError,
    NotPositiveDefiniteError,
)

N = 8
X = torch.linspace(-1, 1, N, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 0.5]], dtype=torch.float64)
Y = torch.linspace(0, 2, N, dtype=torch.float64)


def ridge(beta, mask):
    vif.params.check_mask(mask, N)
    return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()


BETA = vif.fit.newton(ridge, torch.zeros(2, dtype=torch.float64), torch.ones(N, dtype=torch.float64))


def target(beta):
    return beta.sum()


def test_mask_of_the_wrong_length():
    with pytest.raises(MaskError, match=r"shape \(5,\) but the objective has 8 units"):
        vif.influence(ridge, BETA, target, n_units=5)


def test_objective_that_breaks_on_the_mask_shape_names_n_units():
    def unchecked(beta, mask):
        return (mask * (Y - X @ beta).square()).sum()

    with pytest.raises(InputError, match="Does n_units equal the number of units"):
        vif.influence(unchecked, BETA, target, n_units=3)


def test_nan_objective_and_nan_target():
    with pytest.raises(NonFiniteError, match="objective"):
        vif.influence(lambda b, m: ridge(b, m) * torch.nan, BETA, target, n_units=N)
    with pytest.raises(NonFiniteError, match="target"):
        vif.influence(ridge, BETA, lambda b: b.sum() * torch.nan, n_units=N)


def test_objective_undefined_after_a_removal():
    def log_of_total(beta, mask):  # log(0) when the only weighted unit is removed
        return ridge(beta, mask) - torch.log(mask[0] * torch.exp(beta[0]))

    with pytest.raises(NonFiniteError, match=r"not finite for unit\(s\) 0"):
        vif.influence(log_of_total, BETA, target, n_units=N)


def test_wrong_target_shape_and_type():
    with pytest.raises(InputError, match="scalar or a 1-D tensor"):
        vif.influence(ridge, BETA, lambda b: b.outer(b), n_units=N)
    with pytest.raises(InputError, match="must be callable"):
        vif.influence(ridge, BETA, 3.0, n_units=N)


def test_objective_must_return_a_scalar():
    with pytest.raises(InputError, match="scalar tensor"):
        vif.influence(lambda b, m: m * (Y - X @ b), BETA, target, n_units=N)


def test_hessian_not_positive_definite_suggests_damping():
    def concave(beta, mask):
        return -0.5 * (mask * (Y - X @ beta).square()).sum()

    with pytest.raises(NotPositiveDefiniteError, match="pass damping="):
        vif.influence(concave, BETA, target, n_units=N)


def test_iterative_solver_that_does_not_converge():
    with pytest.raises(ConvergenceError, match="CG did not converge"):
        vif.influence(ridge, BETA, target, n_units=N, hessian=vif.solvers.CG(max_iter=1, tol=1e-14))
    with pytest.raises(ConvergenceError, match="LiSSA did not converge"):
        vif.influence(ridge, BETA, target, n_units=N, hessian=vif.solvers.LiSSA(max_iter=3, tol=1e-14))


def test_unknown_names_and_bad_values():
    with pytest.raises(InputError, match="Unknown method 'newton'"):
        vif.influence(ridge, BETA, target, n_units=N, method="newton")
    with pytest.raises(InputError, match="Unknown hessian backend 'inverse'"):
        vif.influence(ridge, BETA, target, n_units=N, hessian="inverse")
    with pytest.raises(InputError, match="eps must lie in"):
        vif.influence(ridge, BETA, target, n_units=N, eps=0.0)
    with pytest.raises(InputError, match="damping must be a number >= 0"):
        vif.influence(ridge, BETA, target, n_units=N, damping=-1.0)
    with pytest.raises(InputError, match=r"units must lie in \[0, 8\)"):
        vif.influence(ridge, BETA, target, n_units=N, units=[0, 8])
    with pytest.raises(InputError, match="n_units must be a positive int"):
        vif.influence(ridge, BETA, target, n_units=0)
    with pytest.raises(InputError, match="float32 or float64"):
        vif.influence(ridge, BETA.long(), target, n_units=N)
    with pytest.raises(InputError, match="tensor or a dict of tensors"):
        vif.influence(ridge, BETA.numpy(), target, n_units=N)


def test_objective_that_ignores_the_mask():
    def no_mask(beta, mask):
        return 0.5 * (Y - X @ beta).square().sum() + 0.5 * beta.square().sum()

    beta = vif.fit.newton(no_mask, torch.zeros(2, dtype=torch.float64), torch.ones(N, dtype=torch.float64))
    for method in ("vif", "if"):
        with pytest.raises(MaskIgnoredError, match="ignores its mask"):
            vif.influence(no_mask, beta, target, n_units=N, method=method)
        with pytest.raises(MaskIgnoredError):
            vif.parameter_influence(no_mask, beta, n_units=N, method=method)


def test_fits_raise_when_they_do_not_converge():
    ones = torch.ones(N, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match="Newton did not converge in 0 iterations"):
        vif.fit.newton(ridge, torch.zeros(2, dtype=torch.float64), ones, max_iter=0)
    with pytest.raises(ConvergenceError, match="L-BFGS did not converge"):
        vif.fit.lbfgs(ridge, torch.zeros(2, dtype=torch.float64), ones, max_iter=1, gtol=1e-15)
    with pytest.raises(InputError, match="mask must be a 1-D float tensor"):
        vif.fit.newton(ridge, torch.zeros(2, dtype=torch.float64), torch.ones(N, dtype=torch.long))


def test_mask_checks():
    with pytest.raises(MaskError, match="dtype torch.int64"):
        vif.params.check_mask(torch.ones(N, dtype=torch.long), N)
    with pytest.raises(MaskError, match="must be a torch.Tensor"):
        vif.params.check_mask([1.0] * N, N)
