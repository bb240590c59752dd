"""Solvers that fit small convex models to a tight tolerance, so that influence's optimality assumption holds.

Both solvers minimise ``objective(params, mask)`` over ``params`` for a fixed ``mask`` and raise
:class:`~vif.errors.ConvergenceError` when the final gradient's largest absolute entry is above ``gtol``:
an unconverged fit makes every influence estimate and every leave-one-out difference unreliable.
The returned parameters have the structure of ``init`` (tensor or dict) and are detached.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad

from .errors import ConvergenceError, InputError
from .hessian import hessian_matrix
from .params import Params, check_finite, flatten

__all__ = ["newton", "lbfgs", "gradient_norm"]


def _flat(objective: Callable, init: Params, mask: torch.Tensor):
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point() or mask.ndim != 1:
        raise InputError("mask must be a 1-D float tensor (ones keep units, zeros remove them).")
    theta, unflatten = flatten(init)
    mask = mask.to(dtype=theta.dtype, device=theta.device)

    def function(vector: torch.Tensor) -> torch.Tensor:
        return objective(unflatten(vector), mask)

    check_finite(function(theta), "objective(init, mask)", "Start from finite parameters (e.g. zeros).")
    return theta.clone(), unflatten, function


def gradient_norm(objective: Callable, params: Params, mask: torch.Tensor) -> float:
    """Largest absolute entry of ``grad_params objective(params, mask)``: the convergence measure used here."""
    theta, _, function = _flat(objective, params, mask)
    return float(grad(function)(theta).abs().max())


def newton(
    objective: Callable, init: Params, mask: torch.Tensor, *, gtol: float = 1e-9, max_iter: int = 100
) -> Params:
    """Minimise by Newton's method with a backtracking (Armijo) line search.

    Each step solves ``(H + mu I) d = -g`` by Cholesky, with ``mu = 0`` unless ``H`` is not positive
    definite, in which case ``mu`` grows tenfold from ``1e-8 * max|diag H|`` until it is (Levenberg).
    Converges quadratically near a strict minimum; meant for up to a few thousand parameters.

    Args:
        objective: ``objective(params, mask) -> scalar``.
        init: starting parameters (tensor or dict of tensors); for leave-one-out, the full-data fit.
        mask: float tensor of the objective's mask shape.
        gtol: stop when ``max|grad| <= gtol``.
        max_iter: iteration cap.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        ConvergenceError: ``max|grad| > gtol`` after ``max_iter`` steps or when no step decreases the
            objective; the message gives the iterations and gradient norm.
    """
    theta, unflatten, function = _flat(objective, init, mask)
    gradient_of = grad(function)
    value = function(theta)
    for iteration in range(max_iter + 1):
        gradient = check_finite(gradient_of(theta), "the gradient during the Newton fit")
        norm = float(gradient.abs().max())
        if norm <= gtol:
            return unflatten(theta.detach())
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
            raise ConvergenceError(
                f"Newton stalled at iteration {iteration}: no step along the Newton direction decreases the "
                f"objective, max|grad| = {norm:.3e} > gtol = {gtol:.1e}. This is the floating-point floor "
                "of the objective: use float64, loosen gtol, or check the objective's gradient."
            )
        theta, value = candidate, new_value
    raise ConvergenceError(
        f"Newton did not converge in {max_iter} iterations: max|grad| = {norm:.3e} > gtol = {gtol:.1e}. "
        "Increase max_iter; if the parameters keep growing the minimum may not exist (e.g. separable data): "
        "add an L2 penalty."
    )


def _damped_newton_step(matrix: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    mu = 0.0
    floor = 1e-8 * max(float(matrix.diagonal().abs().max()), 1.0)
    while True:
        factor, info = torch.linalg.cholesky_ex(matrix + mu * identity)
        if int(info) == 0:
            return -torch.cholesky_solve(gradient[:, None], factor)[:, 0]
        mu = floor if mu == 0.0 else 10.0 * mu


def lbfgs(
    objective: Callable,
    init: Params,
    mask: torch.Tensor,
    *,
    gtol: float = 1e-7,
    max_iter: int = 2000,
    history_size: int = 20,
) -> Params:
    """Minimise by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``), full batch.

    Args:
        objective, init, mask: as in :func:`newton`.
        gtol: stop when ``max|grad| <= gtol``.
        max_iter: cap on L-BFGS iterations (over restarts).
        history_size: number of curvature pairs kept.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        ConvergenceError: ``max|grad| > gtol`` at the end; the message gives the gradient norm.
    """
    theta, unflatten, function = _flat(objective, init, mask)
    variable = theta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [variable], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=gtol,
        tolerance_change=0.0, history_size=history_size, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = function(variable)
        loss.backward()
        return loss

    used, norm = 0, float("inf")
    while used < max_iter:
        optimizer.param_groups[0]["max_iter"] = max_iter - used
        optimizer.param_groups[0]["max_eval"] = 2 * (max_iter - used)
        optimizer.step(closure)
        used += max(int(optimizer.state[variable].get("n_iter", 1)), 1)
        norm = float(grad(function)(variable.detach()).abs().max())
        if norm <= gtol or not torch.isfinite(torch.tensor(norm)):
            break
        optimizer.state.clear()  # restart from the current point with a fresh curvature history
    check_finite(variable.detach(), "the L-BFGS solution", "The objective diverged; start closer or add L2.")
    if norm > gtol:
        raise ConvergenceError(
            f"L-BFGS did not converge in {max_iter} iterations: max|grad| = {norm:.3e} > gtol = {gtol:.1e}. "
            "Increase max_iter, loosen gtol, or polish with vif.fit.newton (exact Hessian)."
        )
    return unflatten(variable.detach())
