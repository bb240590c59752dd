"""One home per concept: the built solver, the target and the removals, shared by every route.

Each test fails on the code before the second architecture pass (see the comments): the raw ``hessian=`` spec
was matched as the string "pinv", ``diagnostics=True`` rebuilt and refactorised the problem, and the target
and the removals had a parser per route.
"""

from __future__ import annotations

import pytest
import torch

import vif
import vif.solvers
from vif.errors import InputError, NonFiniteError

N, P = 12, 3
GENERATOR = torch.Generator().manual_seed(0)
X = torch.randn(N, P, generator=GENERATOR, dtype=torch.float64)
Y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(N, generator=GENERATOR,
                                                                                 dtype=torch.float64)


def ridge(beta, mask):
    return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()


def ridge_fit(mask, init=None):
    return torch.linalg.solve(X.T @ (mask[:, None] * X) + torch.eye(P, dtype=torch.float64), X.T @ (mask * Y))


BETA = ridge_fit(torch.ones(N, dtype=torch.float64))


def owned_quadratic():
    """theta = [w (P), a_0 .. a_{N-1}]: a_i is unit i's own offset, so unit_params = [[P + i]]."""
    def objective(theta, mask):
        residual = Y - X @ theta[:P] - theta[P:]
        return 0.5 * (mask * residual.square()).sum() + 0.5 * theta.square().sum()

    theta = vif.fit.newton(objective, torch.zeros(N + P, dtype=torch.float64), torch.ones(N, dtype=torch.float64))
    return objective, theta, [[P + unit] for unit in range(N)]


@pytest.mark.parametrize("hessian", ["pinv", vif.solvers.PseudoInverse(), vif.solvers.PseudoInverse(rcond=1e-10)],
                         ids=["name", "spec", "spec-with-options"])
def test_unit_params_refuse_a_pseudo_inverse_however_it_is_given(hessian):
    # before: only the string "pinv" was refused; PseudoInverse() silently gave a step without the Schur complement
    objective, theta, own = owned_quadratic()
    with pytest.raises(InputError, match="invertible Hessian"):
        vif.influence(objective, theta, lambda t: t[:P].sum(), n_units=N, unit_params=own, hessian=hessian)


def test_unit_params_refuse_a_ready_pseudo_inverse_solver():
    objective, theta, own = owned_quadratic()
    solve = vif.solvers.pinv_solver(torch.func.hessian(lambda t: objective(t, torch.ones(N, dtype=t.dtype)))(theta))
    with pytest.raises(InputError, match="invertible Hessian"):
        vif.parameter_influence(objective, theta, n_units=N, unit_params=own, hessian=solve)


def test_diagnostics_reuse_the_estimates_factorisation(monkeypatch):
    # before: influence(..., diagnostics=True) called vif.trust.trust, which rebuilt the problem (2 factorisations)
    calls = []
    original = vif.solvers.cholesky_solver

    def counting(matrix, damping=0.0):
        calls.append(matrix.shape)
        return original(matrix, damping)

    monkeypatch.setattr(vif.solvers, "cholesky_solver", counting)
    estimate, report = vif.influence(ridge, BETA, lambda b: b.sum(), n_units=N, diagnostics=True)
    assert len(calls) == 1
    assert torch.allclose(report.estimate, estimate, atol=1e-12)  # the report checks the estimate's own step
    alone = vif.trust.trust(ridge, BETA, lambda b: b.sum(), n_units=N)
    assert torch.equal(alone.newton, report.newton) and torch.equal(alone.ratio, report.ratio)


def test_a_bare_solver_callable_is_wrapped_once_and_named():
    matrix = torch.eye(4, dtype=torch.float64) * 2.0
    solve = vif.solvers.make_solver(lambda t: t.sum(), torch.zeros(4, dtype=torch.float64),
                                    lambda rhs: torch.linalg.solve(matrix, rhs))
    assert solve.backend == "callable" and not solve.pseudo_inverse
    assert torch.allclose(solve(torch.ones(4, dtype=torch.float64)), torch.full((4,), 0.5, dtype=torch.float64))


def _every_route(target, **options):
    """Call every route that takes a target with the same problem; yields (name, call)."""
    yield "influence", lambda: vif.influence(ridge, BETA, target, n_units=N, **options)
    yield "trust", lambda: vif.trust.trust(ridge, BETA, target, n_units=N, **options)
    yield "forward", lambda: vif.forward.forward_influence(ridge, BETA, target, n_units=N, **options)
    yield "second order", lambda: vif.datamodels.second_order_influence(ridge, BETA, target, n_units=N,
                                                                      groups=[[0, 1], [2]], **options)
    yield "leave_one_out", lambda: vif.leave_one_out(ridge_fit, BETA, target, n_units=N, units=[0, 1],
                                                     progress=False, **options)


@pytest.mark.parametrize("route", [name for name, _ in _every_route(None)])
def test_every_route_applies_the_same_target_rules(route):
    # before: LOO and Forward-INF took a matrix-valued or non-finite target without a word, the second-order
    # estimate a non-finite one
    def call(target, **options):
        return dict(_every_route(target, **options))[route]()

    with pytest.raises(InputError, match="scalar or a 1-D tensor"):
        call(lambda b: torch.outer(b, b))
    with pytest.raises(NonFiniteError, match="target"):
        call(lambda b: b.sum() / 0.0)
    with pytest.raises(InputError, match="target_takes_mask=False"):
        call(lambda b, k: b[:k].sum())  # a second parameter that is not the mask
    with pytest.raises(InputError, match="must be callable"):
        call(3.0)
    scalar, vector = call(lambda b: b.sum()), call(lambda b: b[:2])
    scalar = scalar.estimate if route == "trust" else scalar
    vector = vector.estimate if route == "trust" else vector
    assert scalar.ndim == 1 and vector.ndim == 2 and vector.shape[1] == 2


@pytest.mark.parametrize("bad, message", [([], "units is empty"), ([0.5], "integer unit indices"),
                                          ([N], r"units must lie in \[0, 12\)"), ([[0, 1]], "1-D sequence")])
def test_leave_one_out_parses_removals_as_the_estimates_do(bad, message):
    # before: leave_one_out had its own parser, which truncated 0.5 to unit 0 and flattened [[0, 1]]
    for call in (lambda: vif.influence(ridge, BETA, lambda b: b.sum(), n_units=N, units=bad),
                 lambda: vif.leave_one_out(ridge_fit, BETA, lambda b: b.sum(), n_units=N, units=bad, progress=False)):
        with pytest.raises(InputError, match=message):
            call()


def test_second_order_influence_goes_through_the_core_checks():
    # it now builds the core problem (before: its own flatten, solver and target): the same checks still apply
    with pytest.raises(InputError, match="groups\\[0\\] is empty"):
        vif.datamodels.second_order_influence(ridge, BETA, lambda b: b.sum(), n_units=N, groups=[[], [1]])
    with pytest.raises(vif.errors.NotAMinimiserError):
        vif.datamodels.second_order_influence(ridge, BETA + 1.0, lambda b: b.sum(), n_units=N, groups=[[0]])
    # and agrees with exact refits on a quadratic as the Neumann series converges
    groups = [[0, 1, 2], [5, 7]]
    actual = vif.leave_one_out(ridge_fit, BETA, lambda b: b.sum(), n_units=N, groups=groups, progress=False)
    refined = vif.datamodels.second_order_influence(ridge, BETA, lambda b: b.sum(), n_units=N, groups=groups,
                                                    terms=60)
    assert torch.allclose(refined, actual, atol=1e-9)
