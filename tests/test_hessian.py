"""iHVP backends on explicit matrices and on a real Hessian, against direct solves and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

import vif
from vif.datasets.tabular import breast_cancer
from vif.errors import ConvergenceError, ConvergenceWarning, NotPositiveDefiniteError
from vif.solvers import CG, LiSSA, cg_solve, cholesky_solver, lissa_solve, pinv_solver
from vif.tasks import logistic


def _spd(n: int, condition: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, np.log10(condition), n, dtype=torch.float64)) @ q.T


def test_cg_matches_scipy_and_the_direct_solve_on_an_explicit_matrix():
    matrix = _spd(30, 1e3)
    rhs = torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = cg_solve(lambda v: matrix @ v, rhs, tol=1e-12)
    direct = torch.linalg.solve(matrix, rhs)
    assert torch.allclose(ours, direct, rtol=1e-8, atol=1e-10)
    for column in range(4):
        reference, info = scipy.sparse.linalg.cg(matrix.numpy(), rhs[:, column].numpy(), rtol=1e-12, atol=0.0)
        assert info == 0
        assert np.allclose(ours[:, column].numpy(), reference, rtol=1e-7, atol=1e-9)


def test_preconditioned_cg_and_damping():
    matrix = _spd(25, 1e4, seed=2)
    rhs = torch.randn(25, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    jacobi = 1.0 / (matrix.diagonal() + 0.1)
    ours = cg_solve(lambda v: matrix @ v, rhs, damping=0.1, tol=1e-12,
                    preconditioner=lambda r: jacobi[:, None] * r if r.ndim == 2 else jacobi * r)
    direct = torch.linalg.solve(matrix + 0.1 * torch.eye(25, dtype=torch.float64), rhs)
    assert torch.allclose(ours, direct, rtol=1e-8, atol=1e-10)


def test_lissa_and_pinv_on_explicit_matrices():
    matrix = _spd(10, 10.0, seed=4)
    rhs = torch.randn(10, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    direct = torch.linalg.solve(matrix, rhs)
    assert torch.allclose(lissa_solve(lambda v: matrix @ v, rhs, tol=1e-10), direct, rtol=1e-6, atol=1e-8)
    assert torch.allclose(pinv_solver(matrix)(rhs), direct, rtol=1e-10, atol=1e-12)
    assert torch.allclose(cholesky_solver(matrix)(rhs), direct, rtol=1e-10, atol=1e-12)


def test_pinv_ignores_a_null_direction_that_the_right_hand_side_does_not_see():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    eigenvalues = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    matrix = q @ torch.diag(eigenvalues) @ q.T
    rhs = q[:, 1:] @ torch.arange(1.0, 6.0, dtype=torch.float64)  # orthogonal to the null space
    solution = pinv_solver(matrix)(rhs)
    assert torch.allclose(matrix @ solution, rhs, atol=1e-10)
    assert abs(float(q[:, 0] @ solution)) < 1e-10
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        cholesky_solver(matrix - 0.5 * torch.eye(6, dtype=torch.float64))


def test_backends_agree_on_the_logistic_hessian():
    data = breast_cancer(seed=0)
    theta = logistic.fit(data.X_train, data.y_train)  # l2 = 30: Hessian eigenvalues in about [30, 90]
    objective = logistic.objective(data.X_train, data.y_train)

    def target(params):
        return logistic.losses(params, data.X_test[:5], data.y_test[:5])

    kwargs = dict(n_units=data.X_train.shape[0], units=torch.arange(40), damping=0.1)
    exact = vif.influence(objective, theta, target, hessian="exact", **kwargs)
    cg = vif.influence(objective, theta, target, hessian=CG(tol=1e-12), **kwargs)
    lissa = vif.influence(objective, theta, target, hessian=LiSSA(tol=1e-6, max_iter=50_000), **kwargs)
    scale = float(exact.norm())
    assert float((cg - exact).norm()) / scale < 1e-6
    assert float((lissa - exact).norm()) / scale < 1e-2


def test_iterative_solvers_report_nonconvergence():
    matrix = _spd(20, 1e6, seed=7)
    rhs = torch.ones(20, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match="CG did not converge in 2 iterations"):
        cg_solve(lambda v: matrix @ v, rhs, max_iter=2)
    with pytest.raises(ConvergenceError, match="LiSSA did not converge"):
        lissa_solve(lambda v: matrix @ v, rhs, max_iter=20)
    with pytest.warns(ConvergenceWarning, match="CG did not converge"):
        cg_solve(lambda v: matrix @ v, rhs, max_iter=2, on_nonconvergence="warn")


def test_cg_detects_an_indefinite_matrix():
    matrix = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    with pytest.raises(NotPositiveDefiniteError, match="non-positive curvature"):
        cg_solve(lambda v: matrix @ v, torch.ones(3, dtype=torch.float64))


def test_a_precomputed_hessian_is_used_as_given_and_validated():
    data = breast_cancer(seed=0)
    theta = logistic.fit(data.X_train, data.y_train)
    objective = logistic.objective(data.X_train, data.y_train)
    flat, unflatten = vif.params.flatten(theta)
    dense = vif.hessian.hessian_matrix(lambda v: objective(unflatten(v), torch.ones(455, dtype=torch.float64)), flat,
                                       chunk_size=7)
    reference = torch.func.hessian(lambda v: objective(unflatten(v), torch.ones(455, dtype=torch.float64)))(flat)
    assert torch.allclose(dense, reference, atol=1e-10)
    kwargs = dict(n_units=455, units=torch.arange(10))
    given = vif.parameter_influence(objective, theta, hessian=dense, **kwargs)
    assert torch.allclose(given, vif.parameter_influence(objective, theta, **kwargs), atol=1e-12)
    factorised = cholesky_solver(dense)  # a ready solver: factorise once, reuse across calls
    assert torch.allclose(vif.parameter_influence(objective, theta, hessian=factorised, **kwargs), given, atol=1e-12)
    with pytest.raises(vif.errors.InputError, match="your own solver"):
        vif.parameter_influence(objective, theta, hessian=factorised, damping=0.1, **kwargs)
    with pytest.raises(vif.errors.InputError, match=r"shape \(31, 31\)"):
        vif.parameter_influence(objective, theta, hessian=dense[:5, :5], **kwargs)
