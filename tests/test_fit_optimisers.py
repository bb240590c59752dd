"""Every optimiser of vif.fit: one signature, closed forms on quadratics, and a ConvergenceError that names the
iterations and the gradient norm when gtol is out of reach within max_iter."""

from __future__ import annotations

import pytest
import torch

import vif
from vif.errors import ConvergenceError, InputError

ATOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _quadratic(dtype, eigenvalues=(4.0, 1.0, 0.25)):
    """``0.5 x^T A x - b^T x`` scaled by the mask's sum, A = Q diag(eigenvalues) Q^T; returns objective, A, b."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    A = (q * torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    b = torch.randn(3, generator=generator, dtype=torch.float64)
    A, b = A.to(dtype), b.to(dtype)

    def objective(x, mask):
        return mask.sum() / mask.numel() * (0.5 * x @ A @ x - b @ x)

    return objective, A, b


def _logistic():
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(40, generator=generator, dtype=torch.float64) > 0).to(torch.float64)

    def objective(w, mask):
        return (mask * torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y, reduction="none")).sum() \
            + 0.5 * (w * w).sum()

    return objective, torch.zeros(3, dtype=torch.float64), torch.ones(40, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_preconditioned_lbfgs_with_the_exact_inverse_is_one_newton_step(dtype):
    objective, A, b = _quadratic(dtype)
    ones = torch.ones(5, dtype=dtype)
    solution = torch.linalg.solve(A, b)
    fitted = vif.fit.preconditioned_lbfgs(objective, torch.zeros(3, dtype=dtype), ones,
                                          preconditioner=lambda g: torch.linalg.solve(A, g), max_iter=1)
    torch.testing.assert_close(fitted, solution, rtol=0, atol=ATOL[dtype])
    rounds = vif.fit.preconditioned_lbfgs(objective, torch.zeros(3, dtype=dtype), ones, hessian=lambda x: A,
                                          refresh=1, max_iter=1)
    torch.testing.assert_close(rounds, solution, rtol=0, atol=ATOL[dtype])


# float64 only: the pseudo-inverse drops eigenvalues below 1e-9 of the largest, under float32's rounding of a zero one
@pytest.mark.parametrize("dtype", [torch.float64])
def test_the_saddle_free_inverse_flips_negative_curvature_and_drops_flat_directions(dtype):
    objective, A, _ = _quadratic(dtype, eigenvalues=(2.0, -3.0, 0.0))
    values, vectors = torch.linalg.eigh(A.double())
    expected = (vectors * torch.where(values.abs() > 1e-6, 1.0 / values.abs(), 0.0)) @ vectors.T
    inverse = vif.fit.saddle_free_inverse(objective, torch.zeros(3, dtype=dtype), torch.ones(5, dtype=dtype))
    torch.testing.assert_close(inverse.double(), expected, rtol=0, atol=10 * ATOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64])
@pytest.mark.parametrize("fresh", [False, True], ids=["cached", "fresh"])
def test_chord_newton_with_the_exact_pseudo_inverse_takes_one_step(dtype, fresh):
    """A flat direction (zero eigenvalue) with ``b`` off it: the minimiser nearest the start is ``A^+ b``."""
    _, A, b = _quadratic(dtype, eigenvalues=(2.0, 0.5, 0.0))
    values, vectors = torch.linalg.eigh(A)
    flat = vectors[:, values.abs().argmin()]
    b = b - (flat @ b) * flat

    def objective(x, mask):
        return mask.mean() * (0.5 * x @ A @ x - b @ x)

    ones = torch.ones(4, dtype=dtype)
    inverse = None if fresh else vif.fit.saddle_free_inverse(objective, torch.zeros(3, dtype=dtype), ones)
    fitted = vif.fit.chord_newton(objective, torch.zeros(3, dtype=dtype), ones, inverse=inverse, max_iter=1)
    torch.testing.assert_close(fitted, torch.linalg.pinv(A, hermitian=True) @ b, rtol=0, atol=10 * ATOL[dtype])


def test_lbfgs_newton_polishes_with_newton_only_up_to_the_dense_limit(monkeypatch):
    objective, init, ones = _logistic()
    reference = vif.fit.newton(objective, init, ones, gtol=1e-12)
    calls = []
    monkeypatch.setattr(vif.fit, "newton", lambda *args, **kwargs: calls.append(1) or reference)
    vif.fit.lbfgs_newton(objective, init, ones, gtol=1e-10)
    assert calls == [1]
    monkeypatch.setattr(vif.fit, "DENSE_LIMIT", 2)  # three parameters: L-BFGS alone
    fitted = vif.fit.lbfgs_newton(objective, init, ones, gtol=1e-8)
    assert calls == [1] and vif.fit.gradient_norm(objective, fitted, ones) <= 1e-8
    torch.testing.assert_close(fitted, reference, rtol=0, atol=1e-7)


def test_one_size_rule():
    assert vif.fit.NEWTON_LIMIT == vif.fit.DENSE_LIMIT // 3  # an eigendecomposition costs 27 Cholesky factorisations


def _failures():
    objective, init, ones = _logistic()
    hessian = lambda w: vif.hessian.hessian_matrix(lambda v: objective(v, ones), w)  # noqa: E731
    return [
        ("newton", lambda: vif.fit.newton(objective, init, ones, max_iter=1),
         r"Newton did not converge in 1 iterations: max\|grad\| = \d"),
        ("lbfgs", lambda: vif.fit.lbfgs(objective, init, ones, max_iter=1),
         r"L-BFGS did not converge in 1 iterations: max\|grad\| = \d"),
        ("preconditioned_lbfgs", lambda: vif.fit.preconditioned_lbfgs(objective, init, ones,
                                                                      preconditioner=lambda g: 1e-3 * g, max_iter=2),
         r"preconditioned L-BFGS did not converge in 2 iterations: max\|grad\| = \d"),
        ("preconditioned_lbfgs rounds", lambda: vif.fit.preconditioned_lbfgs(objective, init, ones, hessian=hessian,
                                                                             refresh=1, max_iter=1, gtol=1e-12),
         r"in 1 iterations: max\|grad\| = \d"),
        ("lbfgs_newton", lambda: vif.fit.lbfgs_newton(objective, init, ones, gtol=1e-30),
         r"Newton (stalled at iteration \d+|did not converge in 100 iterations).*max\|grad\| = \d"),
        ("saddle_free_newton", lambda: vif.fit.saddle_free_newton(objective, init, ones, max_iter=1, newton_steps=0),
         r"max\|grad\| = \S+ > gtol = \S+ after 1 L-BFGS iterations and 0 Newton steps"),
        ("chord_newton", lambda: vif.fit.chord_newton(objective, init, ones, inverse=torch.zeros(3, 3, dtype=init.dtype),
                                                      refreshes=0),
         r"chord Newton stalled at iteration 1: max\|grad\| = \d"),
        ("chord_newton", lambda: vif.fit.chord_newton(objective, init, ones, max_iter=1, gtol=1e-30),
         r"chord Newton did not converge in 1 iterations: max\|grad\| = \d"),
    ]


@pytest.mark.parametrize("name, run, message", _failures(), ids=[failure[0] for failure in _failures()])
def test_every_optimiser_raises_a_convergence_error_naming_iterations_and_gradient(name, run, message):
    with pytest.raises(ConvergenceError, match=message):
        run()


def test_a_diverging_chord_raises_and_bad_options_are_refused():
    def objective(x, mask):
        return (mask.sum() * (torch.exp(x) - x)).sum()

    ones, start = torch.ones(1, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match="chord Newton diverged at iteration 1: the gradient is not finite"):
        vif.fit.chord_newton(objective, start, ones, inverse=-1e3 * torch.eye(2, dtype=torch.float64))
    with pytest.raises(InputError, match="exactly one of preconditioner"):
        vif.fit.preconditioned_lbfgs(objective, start, ones)
    with pytest.raises(InputError, match="exactly one of preconditioner"):
        vif.fit.preconditioned_lbfgs(objective, start, ones, preconditioner=lambda g: g, hessian=lambda p: None)
    with pytest.raises(InputError, match="refresh must be a positive"):
        vif.fit.preconditioned_lbfgs(objective, start, ones, preconditioner=lambda g: g, refresh=0)
    with pytest.raises(InputError, match="mask must be a 1-D float tensor"):
        vif.fit.chord_newton(objective, start, torch.ones(1, dtype=torch.long))


def _float32_logistic(n=40):
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64) > 0).to(torch.float64)

    def objective(w, mask):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X.to(w.dtype) @ w, y.to(w.dtype), reduction="none")
        return (mask * loss).sum() + 0.5 * (w * w).sum()

    return objective, torch.ones(n, dtype=torch.float32)


def test_saddle_free_newton_at_its_float32_default_polishes_to_the_rounding_floor():
    """At gtol = 1e-4 L-BFGS used to stop far above float32's floor: 1.4e-5 from the float64 minimiser."""
    objective, ones = _float32_logistic()
    exact = vif.fit.newton(objective, torch.zeros(3, dtype=torch.float64), ones.double(), gtol=1e-12)
    fitted = vif.fit.saddle_free_newton(objective, torch.zeros(3, dtype=torch.float32), ones)
    assert fitted.dtype == torch.float32
    torch.testing.assert_close(fitted.double(), exact, rtol=0, atol=1e-6)


def test_saddle_free_newton_out_of_float32_reach_names_the_precision_first():
    objective, ones = _float32_logistic()
    with pytest.raises(ConvergenceError, match=r"^fit stopped at the rounding floor of torch.float32: max\|grad\| = "
                                               r"\S+ > gtol = 1e-12 .*fit in float64, or use gtol >= 1e-04"):
        vif.fit.saddle_free_newton(objective, torch.zeros(3, dtype=torch.float32), ones, gtol=1e-12)


def test_a_preconditioned_try_that_leaves_the_domain_restarts_from_init():
    # chapter 5 at full size: one warm refit's preconditioned step had no finite objective at any size; the
    # factorised preconditioner then refused the NaN gradient (NonFiniteError) instead of the fit restarting
    def objective(theta, mask):
        return ((theta - 0.5) ** 2).sum() + 0.0 * torch.sqrt(1.0 - theta).sum()  # value and gradient NaN past 1

    overshooting = vif.solvers.cholesky_solver(1e-12 * torch.eye(1, dtype=torch.float64))
    ones = torch.ones(3, dtype=torch.float64)
    fitted = vif.fit.lbfgs_newton(objective, torch.zeros(1, dtype=torch.float64), ones, gtol=1e-9,
                                  preconditioner=overshooting)
    torch.testing.assert_close(fitted, torch.full((1,), 0.5, dtype=torch.float64), rtol=0, atol=1e-9)
    with pytest.raises(vif.errors.ConvergenceError, match="left the objective's domain"):
        vif.fit.preconditioned_lbfgs(objective, torch.zeros(1, dtype=torch.float64), ones, gtol=1e-9,
                                     preconditioner=overshooting)
