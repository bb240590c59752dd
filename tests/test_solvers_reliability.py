"""Issue 21, solver part: singular Hessians, user-supplied Hessians and solvers, solver options, float32 defaults.

Each test fails on the code before the change: a Cholesky factor of a numerically singular Hessian was used,
a dense ``hessian=`` or a solver's output was never checked, ``CG(tol=nan)`` returned zeros, and LiSSA's
float64 tolerance was the default in float32.
"""

from __future__ import annotations

import math

import pytest
import torch

import vif
from vif.errors import ConvergenceError, InputError, NonFiniteError, NotPositiveDefiniteError
from vif.hessian import condition_limit
from vif.solvers import CG, LiSSA, PseudoInverse, cg_solve, cholesky_solver, lissa_solve, pinv_solver
from vif.tasks import logistic

N = 200


def _with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q @ torch.diag(eigenvalues.double()) @ q.T).to(eigenvalues.dtype)


def _duplicated_feature(seed: int = 5):
    """Unpenalised logistic regression whose feature 0 appears twice, at an exact minimiser.

    The 3-feature model is fitted; the 4-feature minimiser splits its first weight in two. The Hessian has an
    exact null direction (1, -1, 0, 0, 0).
    """
    generator = torch.Generator().manual_seed(seed)
    X3 = torch.randn(N, 3, generator=generator, dtype=torch.float64)
    logits = X3 @ torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    y = (torch.rand(N, generator=generator, dtype=torch.float64) < torch.sigmoid(logits)).double()
    small = logistic.fit(X3, y, l2=0.0)
    w = small["weight"]
    theta = {"weight": torch.cat([w[:1] / 2, w[:1] / 2, w[1:]]), "bias": small["bias"]}
    X = torch.cat([X3[:, :1], X3], dim=1)
    return logistic.objective(X3, y, l2=0.0), small, logistic.objective(X, y, l2=0.0), theta


def test_a_duplicated_feature_is_refused_with_the_remedy_and_the_remedies_match_the_reduced_model():
    small_objective, small, objective, theta = _duplicated_feature()
    units = torch.arange(6)
    with pytest.raises(NotPositiveDefiniteError,
                       match=r"numerically singular.*condition number.*parameters \[[01], [01]\].*relative\(.*pinv"):
        vif.parameter_influence(objective, theta, n_units=N, units=units)
    # truth: the reduced model's parameter changes, with feature 0's change split between its two copies
    reduced = vif.parameter_influence(small_objective, small, n_units=N, units=units)
    expected = torch.cat([reduced[:, :1] / 2, reduced[:, :1] / 2, reduced[:, 1:]], dim=1)
    for options in (dict(hessian="pinv"), dict(damping=vif.solvers.relative(1e-6))):
        estimate = vif.parameter_influence(objective, theta, n_units=N, units=units, **options)
        assert torch.allclose(estimate, expected, rtol=1e-5, atol=1e-8), options


@pytest.mark.parametrize("dtype, refused, accepted", [(torch.float64, 1e13, 1e9), (torch.float32, 1e7, 1e3)])
def test_cholesky_refuses_a_condition_number_above_the_dtype_limit(dtype, refused, accepted):
    assert 1e11 < condition_limit(torch.float64) < 1e12 and 1e5 < condition_limit(torch.float32) < 1e6
    rhs = torch.ones(40, dtype=dtype)
    for condition in (refused, accepted):
        matrix = _with_spectrum(torch.logspace(0, math.log10(condition), 40, dtype=dtype))
        assert int(torch.linalg.cholesky_ex(matrix)[1]) == 0  # the factorisation itself succeeds
        if condition == refused:
            with pytest.raises(NotPositiveDefiniteError, match=rf"condition number \d.\de\+\d\d .*{dtype}"):
                cholesky_solver(matrix)
            cholesky_solver(matrix, max_condition=math.inf)  # the opt-out, e.g. for a preconditioner
            cholesky_solver(matrix, damping=100 * condition / condition_limit(dtype))  # the message's damping
        else:
            solution = cholesky_solver(matrix)(rhs)
            direct = torch.linalg.solve(matrix.double(), rhs.double())
            assert float((solution.double() - direct).norm() / direct.norm()) < 10 * condition * torch.finfo(dtype).eps


def test_a_flat_direction_that_the_pivots_do_not_show_is_found_by_the_inverse_step():
    """A near-null direction on the first parameter with a tail on every other: the pivots of L stay large."""
    n = 30
    null = torch.full((n,), 1e-3, dtype=torch.float64)
    null[0] = 1.0
    null = null / null.norm()
    rest = _with_spectrum(torch.linspace(1.0, 2.0, n, dtype=torch.float64), seed=3)
    projector = torch.eye(n, dtype=torch.float64) - torch.outer(null, null)
    matrix = projector @ rest @ projector + 1e-14 * torch.outer(null, null)
    factor, info = torch.linalg.cholesky_ex(matrix)
    assert int(info) == 0
    pivot_bound = float(matrix.diagonal().max() / factor.diagonal().min() ** 2)
    assert pivot_bound * 100 < condition_limit(torch.float64)  # the pivots alone would not even look
    with pytest.raises(NotPositiveDefiniteError, match=r"numerically singular.*parameters \[0\]"):
        cholesky_solver(matrix)


def test_the_books_well_posed_hessians_pass_the_conditioning_check():
    """Ridge-type Hessians like the book's: condition number lambda_max / l2 well below the limit."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 300, generator=generator, dtype=torch.float64)
    X[:, 1] = X[:, 0]  # a duplicated feature is harmless once penalised
    matrix = X.T @ X + 1e-3 * torch.eye(300, dtype=torch.float64)
    rhs = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    assert torch.allclose(cholesky_solver(matrix)(rhs), torch.linalg.solve(matrix, rhs), rtol=1e-6, atol=1e-9)


def _problem():
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(N, 4, generator=generator, dtype=torch.float64)
    y = (torch.rand(N, generator=generator, dtype=torch.float64) < torch.sigmoid(X[:, 0] - X[:, 1])).double()
    theta = logistic.fit(X, y, l2=1.0)
    objective = logistic.objective(X, y, l2=1.0)
    flat, unflatten = vif.params.flatten(theta)
    ones = torch.ones(N, dtype=torch.float64)
    dense = torch.func.hessian(lambda v: objective(unflatten(v), ones))(flat)
    return objective, theta, dense, unflatten, flat


@pytest.mark.parametrize("transform, match", [
    (lambda H, t: H / N, rf"{1 / N:.4g} times the objective's Hessian: built for the mean"),
    (lambda H, t: -H, "negated Hessian"),
    (lambda H, t: H + 0.2 * torch.diag(H.diagonal().flip(0)), "not the Hessian of this objective at params"),
])
def test_a_precomputed_hessian_that_is_not_the_objectives_is_refused(transform, match):
    objective, theta, dense, _, _ = _problem()
    units = torch.arange(5)
    truth = vif.parameter_influence(objective, theta, n_units=N, units=units)
    assert torch.allclose(vif.parameter_influence(objective, theta, n_units=N, units=units, hessian=dense), truth)
    with pytest.raises(InputError, match=rf"does not match the objective.*\|\| = \d.*{match}"):
        vif.parameter_influence(objective, theta, n_units=N, units=units, hessian=transform(dense, theta))
    # a matrix used on purpose goes through an operator, unchecked: here the identity
    identity = vif.solvers.Exact(operator=lambda vectors: vectors)
    direct = vif.parameter_influence(objective, theta, n_units=N, units=units, hessian=lambda rhs: rhs)
    assert torch.equal(vif.parameter_influence(objective, theta, n_units=N, units=units, hessian=identity), direct)


def test_a_solver_that_returns_nan_is_named():
    objective, theta, dense, _, _ = _problem()
    inverse = torch.linalg.inv(dense)

    def broken(rhs):
        out = inverse @ rhs
        out[0] = float("nan")
        return out

    with pytest.raises(NonFiniteError, match=r"'callable' solver returned \d+ non-finite.*finite right-hand side"):
        vif.influence(objective, theta, lambda p: p["weight"].sum(), n_units=N, hessian=broken)

    class Spec:
        def build(self, source, damping):
            return lambda rhs: torch.full_like(rhs, float("inf"))

    with pytest.raises(NonFiniteError, match="'Spec' solver returned"):
        vif.parameter_influence(objective, theta, n_units=N, hessian=Spec())
    with pytest.raises(InputError, match=r"'callable' solver returned \(6, 1\) for a right-hand side of shape \(6,\)"):
        vif.solvers.make_solver(lambda v: v.square().sum(), torch.zeros(6, dtype=torch.float64),
                                lambda rhs: rhs[:, None])(torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("make, match", [
    (lambda: CG(tol=float("nan")), "CG tol must be a finite number in \\(0, 1\\).*nan"),
    (lambda: CG(tol=-1.0), "CG tol .* got -1.0"),
    (lambda: CG(tol=0.0), "CG tol"),
    (lambda: CG(tol=1.0), "CG tol"),
    (lambda: CG(max_iter=0), "CG max_iter must be a positive integer.* got 0"),
    (lambda: CG(max_iter=2.5), "CG max_iter .* got 2.5"),
    (lambda: CG(on_nonconvergence="ignore"), "on_nonconvergence must be 'raise' or 'warn'"),
    (lambda: LiSSA(tol=float("inf")), "LiSSA tol .* got inf"),
    (lambda: LiSSA(scale=-2.0), "LiSSA scale must be a finite number > 0.* got -2.0"),
    (lambda: LiSSA(scale=float("nan")), "LiSSA scale"),
    (lambda: LiSSA(max_iter=-5), "LiSSA max_iter"),
    (lambda: PseudoInverse(rcond=-1.0), r"pinv rcond must be a finite number in \(0, 1\).* got -1.0"),
    (lambda: PseudoInverse(rcond=1.0), "pinv rcond"),
    (lambda: pinv_solver(torch.eye(3, dtype=torch.float64), rcond=float("nan")), "pinv rcond"),
    (lambda: cg_solve(lambda v: v, torch.ones(3, dtype=torch.float64), tol=float("nan")), "CG tol"),
    (lambda: lissa_solve(lambda v: v, torch.ones(3, dtype=torch.float64), scale=0.0), "LiSSA scale"),
    (lambda: cg_solve(lambda v: v, torch.ones(3, dtype=torch.float64), damping=float("nan")), "CG damping"),
    (lambda: vif.solvers.relative(float("inf")), "finite fraction"),
])
def test_solver_options_are_refused_when_the_spec_is_made(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_cg_with_a_nan_tolerance_no_longer_returns_zeros():
    objective, theta, _, _, _ = _problem()
    with pytest.raises(InputError, match="CG tol"):
        vif.influence(objective, theta, lambda p: p["weight"].sum(), n_units=N, hessian=CG(tol=float("nan")))
    with pytest.raises(InputError, match=r"damping must be a number >= 0 \(finite\)"):
        vif.influence(objective, theta, lambda p: p["weight"].sum(), n_units=N, damping=float("inf"))


def test_iterative_defaults_follow_the_dtype_and_float32_failures_say_so():
    matrix = _with_spectrum(torch.logspace(0, 1, 20, dtype=torch.float64), seed=2)
    rhs = torch.randn(20, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    direct = torch.linalg.solve(matrix, rhs)
    single = matrix.float()
    for solve in (lissa_solve, cg_solve):
        # float64 keeps its default (1e-8): the solution is exact to about 1e-8
        assert float((solve(lambda v: matrix @ v, rhs) - direct).norm() / direct.norm()) < 1e-7
        # float32 converges at its default (1e-4) and is as accurate as float32 allows
        solution = solve(lambda v: single @ v, rhs.float())
        assert solution.dtype == torch.float32
        assert float((solution.double() - direct).norm() / direct.norm()) < 1e-3
    with pytest.raises(ConvergenceError, match=r"torch.float32 .*tol >= 0.0001 .*float64"):
        lissa_solve(lambda v: single @ v, rhs.float(), tol=1e-9, max_iter=2000)
    with pytest.raises(ConvergenceError, match="did not converge") as caught:
        lissa_solve(lambda v: matrix @ v, rhs, max_iter=20)
    assert "float32" not in str(caught.value)
    assert CG().tol is None and LiSSA().tol is None
    assert vif.iterative.default_tol(torch.float64) == 1e-8 and vif.iterative.default_tol(torch.float32) == 1e-4
