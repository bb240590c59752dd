"""The loop bodies of :mod:`vif.fit`'s optimisers, on a flat ``function(theta) -> scalar`` (private).

:mod:`vif.fit` is the public home: it turns ``objective(params, mask)`` into a flat function
(:func:`flat_objective`), picks the loops below and documents them. Every loop either reaches ``max|grad| <=
gtol`` or raises :class:`~vif.errors.ConvergenceError` with the iterations and the gradient norm, except
:func:`preconditioned_steps`, which returns a ``converged`` flag for the optimisers that continue from its
last iterate, and its gradient norm (:func:`vif.fit.preconditioned_lbfgs` raises on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad

from .errors import ConvergenceError, InputError, NoFiniteMinimiserError
from .hessian import hessian_matrix
from .params import Params, check_finite, flatten

DEFAULT_GTOL = {"newton": {torch.float64: 1e-9, torch.float32: 1e-4},
                "lbfgs": {torch.float64: 1e-7, torch.float32: 1e-4},
                "saddle_free_newton": {torch.float64: 1e-10, torch.float32: 1e-4}}


def default_gtol(method: str, dtype: torch.dtype) -> float:
    """The default ``gtol`` of ``method`` (``"newton"``, ``"lbfgs"``, ``"saddle_free_newton"``) for ``dtype``.

    float32 resolves an objective to about ``1e-7`` of its size, so its gradients stop near ``1e-5``-``1e-4``
    on the package's objectives; float64 tolerances would never be met.
    """
    return DEFAULT_GTOL[method].get(dtype, DEFAULT_GTOL[method][torch.float32])


def precision_hint(dtype: torch.dtype, gtol: float) -> str:
    """The part of a non-convergence message that names float32 as the likely cause ("" in float64)."""
    if dtype == torch.float64:
        return ""
    return (f" The parameters are {dtype}: its rounding (eps {torch.finfo(dtype).eps:.1e}) limits how small the "
            f"gradient can get, so gtol = {gtol:.0e} may be out of reach: fit in float64 or use gtol >= "
            f"{default_gtol('newton', dtype):.0e} (the {dtype} default).")


def flat_objective(objective: Callable, init: Params, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, Callable[[torch.Tensor], Params], Callable[[torch.Tensor], torch.Tensor]]:
    """``(theta, unflatten, function)`` with ``function(theta) = objective(unflatten(theta), mask)``.

    Checks that ``mask`` is a 1-D float tensor (moved to the parameters' dtype and device) and that the
    objective is finite at ``init``; ``theta`` is a detached copy of ``init``, flat.
    """
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point() or mask.ndim != 1:
        raise InputError("mask must be a 1-D float tensor (ones keep units, zeros remove them).")
    theta, unflatten = flatten(init)
    mask = mask.to(dtype=theta.dtype, device=theta.device)

    def function(vector: torch.Tensor) -> torch.Tensor:
        return objective(unflatten(vector), mask)

    check_finite(function(theta), "objective(init, mask)", "Start from finite parameters (e.g. zeros).")
    return theta.clone(), unflatten, function


def _damped_newton_step(matrix: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``-(H + mu I)^-1 g`` by Cholesky; ``mu = 0``, else growing tenfold from ``1e-8 max|diag H|`` until PD."""
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    mu = 0.0
    floor = 1e-8 * max(float(matrix.diagonal().abs().max()), 1.0)
    while True:
        factor, info = torch.linalg.cholesky_ex(matrix + mu * identity)
        if int(info) == 0:
            return -torch.cholesky_solve(gradient[:, None], factor)[:, 0]
        mu = floor if mu == 0.0 else 10.0 * mu


RUN_OFF_STEPS = 3
"""Aligned, non-contracting Newton steps in a row that :func:`run_off` reads as a coefficient running off."""


def run_off(steps: list[torch.Tensor], theta: torch.Tensor) -> int | None:
    """The coordinate that runs off to infinity along the last Newton ``steps``, or ``None`` (a finite minimiser).

    Near a strict minimum Newton's steps contract quadratically. Where the objective has no finite minimiser
    (monotone likelihood in Cox regression, separable data in logistic regression) it decreases towards its
    infimum along a direction of vanishing curvature: each step moves the parameters by about the same
    amount in the same direction while the gradient shrinks geometrically, so a gradient tolerance is met
    far from any minimiser. Read as run-off: the last :data:`RUN_OFF_STEPS` steps each at least a fifth of
    the one before, pairwise cosine above 0.9, and the last one's largest entry above ``1e-3 max(1,
    max|theta|)``. Cost: a few vector norms (the steps are kept anyway).
    """
    if len(steps) < RUN_OFF_STEPS:
        return None
    last = steps[-RUN_OFF_STEPS:]
    for before, after in zip(last, last[1:]):
        size, previous = float(after.norm()), float(before.norm())
        if not (size >= 0.2 * previous > 0 and float(after @ before) >= 0.9 * size * previous):
            return None
    if float(last[-1].abs().max()) < 1e-3 * max(1.0, float(theta.abs().max())):
        return None
    return int(last[-1].abs().argmax())


def no_finite_minimiser(coordinate: int, theta: torch.Tensor, steps: list[torch.Tensor], norm: float) -> str:
    """The message of a fit whose parameters run off (see :func:`run_off`); it starts "no finite minimiser:"."""
    moved = float(sum(step[coordinate] for step in steps[-RUN_OFF_STEPS:]))
    return (f"no finite minimiser: coefficient {coordinate} runs off along a direction of vanishing curvature "
            f"(now {float(theta[coordinate]):.3g}, moved {moved:+.3g} over the last {RUN_OFF_STEPS} Newton steps "
            f"while max|grad| fell to {norm:.1e}); the objective decreases towards its infimum at infinity. A "
            "covariate level may have no events after the removal (Cox: monotone likelihood) or the data are "
            "separable (logistic): add an L2 penalty or drop the covariate.")


def newton_steps(function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *, gtol: float,
                 max_iter: int) -> torch.Tensor:
    """At most ``max_iter`` damped Newton steps with Armijo backtracking (see :func:`vif.fit.newton`).

    Raises ``ConvergenceError`` starting "no finite minimiser:" when the parameters run off (:func:`run_off`)
    at convergence or at a stall.
    """
    gradient_of = grad(function)
    value = function(theta)
    steps: list[torch.Tensor] = []
    for iteration in range(max_iter + 1):
        gradient = check_finite(gradient_of(theta), "the gradient during the Newton fit")
        norm = float(gradient.abs().max())
        coordinate = run_off(steps, theta)
        if coordinate is not None and norm <= gtol:
            raise NoFiniteMinimiserError(no_finite_minimiser(coordinate, theta, steps, norm))
        if norm <= gtol:
            return theta
        if iteration == max_iter:
            break
        matrix = hessian_matrix(function, theta)
        step = _damped_newton_step(matrix, gradient)
        slope = float(gradient @ step)
        rounding = 16.0 * torch.finfo(theta.dtype).eps * max(abs(float(value)), 1.0)  # objective's resolution
        size = 1.0
        while size > 1e-12:
            candidate = theta + size * step
            new_value = function(candidate)
            if bool(torch.isfinite(new_value)) and float(new_value) <= float(value) + 1e-4 * size * slope + rounding:
                break
            size *= 0.5
        else:
            coordinate = run_off(steps, theta)
            if coordinate is not None:
                raise NoFiniteMinimiserError(no_finite_minimiser(coordinate, theta, steps, norm))
            raise ConvergenceError(
                f"Newton stalled at iteration {iteration}: no step along the Newton direction decreases the "
                f"objective, max|grad| = {norm:.3e} > gtol = {gtol:.1e}. This is the floating-point floor "
                "of the objective: use float64, loosen gtol, or check the objective's gradient."
                + precision_hint(theta.dtype, gtol)
            )
        steps = (steps + [(candidate - theta).detach()])[-RUN_OFF_STEPS:]
        theta, value = candidate, new_value
    raise ConvergenceError(
        f"Newton did not converge in {max_iter} iterations: max|grad| = {norm:.3e} > gtol = {gtol:.1e}. "
        "Increase max_iter (where the task's fit calls vif.fit.newton); if the parameters keep growing the "
        "minimum may not exist (e.g. separable data): add an L2 penalty." + precision_hint(theta.dtype, gtol)
    )


def torch_lbfgs(function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *, gtol: float, max_iter: int,
                history_size: int, max_eval: int | None = None
                ) -> tuple[torch.Tensor, torch.optim.LBFGS, Callable[[], torch.Tensor]]:
    """``(variable, optimizer, closure)``: ``torch.optim.LBFGS`` (strong Wolfe, ``lr = 1``) on a copy of ``theta``.

    ``optimizer.step(closure)`` runs it; ``max_eval=None`` is torch's default (``1.25 max_iter``).
    """
    variable = theta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([variable], lr=1.0, max_iter=max_iter, max_eval=max_eval, tolerance_grad=gtol,
                                  tolerance_change=0.0, history_size=history_size, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = function(variable)
        loss.backward()
        return loss

    return variable, optimizer, closure


def preconditioned_steps(function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                         solve: Callable[[torch.Tensor], torch.Tensor], *, gtol: float, max_iter: int,
                         history_size: int) -> tuple[torch.Tensor, float]:
    """At most ``max_iter`` L-BFGS steps whose initial inverse Hessian is ``solve``; ``(theta, max|grad|)``.

    Armijo backtracking with an allowance for rounding; curvature pairs with ``y.s <= 0`` are skipped. A step
    whose objective is not finite even at the smallest size ends the run: its iterate is returned with
    ``max|grad| = nan`` (a diverged try; before the solvers checked their output, the NaN went on through
    every later step to the same end).
    """
    value_and_gradient = torch.func.grad_and_value(function)
    gradient, value = value_and_gradient(theta)
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    for _ in range(max_iter):
        norm = float(gradient.abs().max())
        if norm <= gtol:
            return theta, norm
        q, alphas = gradient.clone(), []
        for s_k, y_k, rho in reversed(pairs):
            alphas.append(rho * float(s_k @ q))
            q -= alphas[-1] * y_k
        r = solve(q)
        for (s_k, y_k, rho), alpha in zip(pairs, reversed(alphas)):
            r += (alpha - rho * float(y_k @ r)) * s_k
        slope, size = -float(gradient @ r), 1.0
        while True:
            candidate = theta - size * r
            new_gradient, new_value = value_and_gradient(candidate)
            # Armijo, with an allowance for rounding: near the optimum the decrease is below float resolution
            allowance = 8 * torch.finfo(theta.dtype).eps * abs(float(value))
            if float(new_value) <= float(value) + 1e-4 * size * slope + allowance or size < 1e-10:
                break
            size *= 0.5
        if not bool(torch.isfinite(new_value)):  # the step left the objective's domain: a diverged try
            return candidate, math.nan
        s_k, y_k = candidate - theta, new_gradient - gradient
        if float(y_k @ s_k) > 0:
            pairs = (pairs + [(s_k, y_k, 1.0 / float(y_k @ s_k))])[-history_size:]
        theta, value, gradient = candidate, new_value, new_gradient
    return theta, float(gradient.abs().max())


def abs_eigenpairs(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vectors, |values|)`` of the eigenpairs of a symmetric ``matrix`` with ``|value| > 1e-9 max|value|``."""
    values, vectors = torch.linalg.eigh(matrix)
    keep = values.abs() > 1e-9 * values.abs().max()
    return vectors[:, keep], values[keep].abs()


def abs_pinv(function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """``|H|^+`` of the Hessian of ``function`` at ``theta`` over :func:`abs_eigenpairs`, (n_params, n_params)."""
    vectors, values = abs_eigenpairs(hessian_matrix(function, theta))
    return (vectors / values) @ vectors.T


def saddle_free_polish(function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, gtol: float, steps: int,
                       lbfgs_iterations: int) -> torch.Tensor:
    """At most ``steps`` pseudo-inverse ``|H|`` Newton steps with backtracking, to ``max|grad| <= gtol``.

    Below float64 (float32's default ``gtol = 1e-4`` is met far above its rounding floor, which is where
    L-BFGS stops) the steps go on past ``gtol`` while each at least halves ``max|grad|``, and stop at the
    floor: three steps in a row that do not. The best iterate is returned; an error at the floor names the
    precision first. Cost in float32: the one or two more eigendecompositions that quadratic convergence needs.
    """
    gradient = grad(function)
    low_precision = theta.dtype != torch.float64
    best, best_norm, stalled, taken = theta, float("inf"), 0, 0
    for _ in range(steps):
        g = check_finite(gradient(theta), "the gradient during the Newton polish")
        norm = float(g.abs().max())
        if norm <= 0.5 * best_norm:
            stalled = 0
        else:
            stalled += 1
        if norm < best_norm:
            best, best_norm = theta, norm
        if norm <= gtol and not (low_precision and stalled == 0):
            return best if low_precision else theta
        if low_precision and stalled >= 3:
            break
        vectors, values = abs_eigenpairs(hessian_matrix(function, theta))
        step = -vectors @ ((vectors.T @ g) / values)
        value, rate = function(theta), 1.0
        rounding = 16.0 * torch.finfo(theta.dtype).eps * abs(float(value))  # the objective's resolution
        while rate > 1e-10 and not (float(function(theta + rate * step))
                                    <= float(value + 1e-4 * rate * (g @ step)) + rounding):
            rate *= 0.5
        theta, taken = theta + rate * step, taken + 1
    if low_precision:
        final = float(gradient(theta).abs().max())
        theta = theta if final < best_norm else best
    g_max = float(gradient(theta).abs().max())
    if g_max > gtol:
        where = f"after {lbfgs_iterations} L-BFGS iterations and {taken} Newton steps"
        if low_precision:
            raise ConvergenceError(
                f"fit stopped at the rounding floor of {theta.dtype}: max|grad| = {g_max:.2e} > gtol = {gtol:.0e} "
                f"{where}, and the Newton steps no longer reduce it. {theta.dtype} resolves the objective to about "
                f"eps = {torch.finfo(theta.dtype).eps:.1e} of its size: fit in float64, or use gtol >= "
                f"{default_gtol('saddle_free_newton', theta.dtype):.0e} (the {theta.dtype} default). If the gradient "
                "is far above that floor, raise the L2 penalty, max_iter or newton_steps."
            )
        raise ConvergenceError(
            f"fit stopped with max|grad| = {g_max:.2e} > gtol = {gtol:.0e} {where}; raise the L2 penalty (a flatter "
            "loss converges slowly), max_iter or newton_steps, or loosen gtol."
        )
    return theta


def chord_steps(function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, inverse: torch.Tensor | None,
                *, gtol: float, max_iter: int, refreshes: int) -> torch.Tensor:
    """Steps ``theta <- theta - inverse @ g`` (see :func:`vif.fit.chord_newton`), to ``max|grad| <= gtol``."""
    gradient, previous, newton = grad(function), float("inf"), inverse is None
    for iteration in range(max_iter + 1):
        g = gradient(theta)
        size = float(g.abs().max())
        if not torch.isfinite(g).all():
            raise ConvergenceError(f"chord Newton diverged at iteration {iteration}: the gradient is not finite. "
                                   "Start closer to the minimum or from a fresh Hessian (inverse=None).")
        if size <= gtol:
            return theta
        if iteration == max_iter:
            break
        newton = newton or not size < 0.9 * previous
        if newton:
            if refreshes == 0:
                raise ConvergenceError(
                    f"chord Newton stalled at iteration {iteration}: max|grad| = {size:.3e} > gtol = {gtol:.1e}, "
                    "the gradient stopped shrinking and every Hessian refresh is used; raise refreshes or fit "
                    "by vif.fit.saddle_free_newton." + precision_hint(theta.dtype, gtol))
            inverse, refreshes = abs_pinv(function, theta), refreshes - 1
        theta, previous = theta - inverse @ g, size
    raise ConvergenceError(
        f"chord Newton did not converge in {max_iter} iterations: max|grad| = {size:.3e} > gtol = {gtol:.1e}. "
        "Increase max_iter or refreshes, or fit by vif.fit.saddle_free_newton." + precision_hint(theta.dtype, gtol))
