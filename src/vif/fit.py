"""Every optimiser of the package: Newton, L-BFGS, preconditioned L-BFGS, the saddle-free Newton polish, Adam.

The tight solvers minimise ``objective(params, mask)`` over ``params`` for a fixed ``mask`` and raise
:class:`~vif.errors.ConvergenceError` when the final gradient's largest absolute entry is above ``gtol``:
an unconverged fit makes every influence estimate and every leave-one-out difference unreliable.
The returned parameters have the structure of ``init`` (tensor or dict) and are detached. :func:`adam` and
:func:`minibatch_adam` reproduce the papers' first-order training protocols (a fixed number of epochs, no
tolerance): they are ground truths of a protocol, not minimisers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad, vmap

from .errors import ConvergenceError, InputError
from .hessian import hessian_matrix
from .params import Params, check_finite, flatten

__all__ = ["newton", "lbfgs", "gradient_norm", "default_gtol", "preconditioned_lbfgs", "saddle_free_newton", "adam",
           "minibatch_adam"]


def _flat(objective: Callable, init: Params, mask: torch.Tensor):
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point() or mask.ndim != 1:
        raise InputError("mask must be a 1-D float tensor (ones keep units, zeros remove them).")
    theta, unflatten = flatten(init)
    mask = mask.to(dtype=theta.dtype, device=theta.device)

    def function(vector: torch.Tensor) -> torch.Tensor:
        return objective(unflatten(vector), mask)

    check_finite(function(theta), "objective(init, mask)", "Start from finite parameters (e.g. zeros).")
    return theta.clone(), unflatten, function


DEFAULT_GTOL = {"newton": {torch.float64: 1e-9, torch.float32: 1e-4}, "lbfgs": {torch.float64: 1e-7, torch.float32: 1e-4},
                "saddle_free_newton": {torch.float64: 1e-10, torch.float32: 1e-4}}


def default_gtol(method: str, dtype: torch.dtype) -> float:
    """The default ``gtol`` of ``method`` (``"newton"``, ``"lbfgs"``, ``"saddle_free_newton"``) for ``dtype``.

    float32 resolves an objective to about ``1e-7`` of its size, so its gradients stop near ``1e-5``-``1e-4``
    on the package's objectives; float64 tolerances would never be met.
    """
    return DEFAULT_GTOL[method].get(dtype, DEFAULT_GTOL[method][torch.float32])


def _precision_hint(dtype: torch.dtype, gtol: float) -> str:
    if dtype == torch.float64:
        return ""
    return (f" The parameters are {dtype}: its rounding (eps {torch.finfo(dtype).eps:.1e}) limits how small the "
            f"gradient can get, so gtol = {gtol:.0e} may be out of reach: fit in float64 or use gtol >= "
            f"{default_gtol('newton', dtype):.0e} (the {dtype} default).")


def gradient_norm(objective: Callable, params: Params, mask: torch.Tensor) -> float:
    """Largest absolute entry of ``grad_params objective(params, mask)``: the convergence measure used here."""
    theta, _, function = _flat(objective, params, mask)
    return float(grad(function)(theta).abs().max())


def newton(
    objective: Callable, init: Params, mask: torch.Tensor, *, gtol: float | None = None, max_iter: int = 100
) -> Params:
    """Minimise by Newton's method with a backtracking (Armijo) line search.

    Each step solves ``(H + mu I) d = -g`` by Cholesky, with ``mu = 0`` unless ``H`` is not positive
    definite, in which case ``mu`` grows tenfold from ``1e-8 * max|diag H|`` until it is (Levenberg).
    Converges quadratically near a strict minimum; meant for up to a few thousand parameters.

    Args:
        objective: ``objective(params, mask) -> scalar``.
        init: starting parameters (tensor or dict of tensors); for leave-one-out, the full-data fit.
        mask: float tensor of the objective's mask shape.
        gtol: stop when ``max|grad| <= gtol``; default by dtype (:func:`default_gtol`: ``1e-9`` in float64,
            ``1e-4`` in float32).
        max_iter: iteration cap.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        ConvergenceError: ``max|grad| > gtol`` after ``max_iter`` steps or when no step decreases the
            objective; the message gives the iterations and gradient norm (and names float32 as the likely
            cause when the parameters are float32).
    """
    theta, unflatten, function = _flat(objective, init, mask)
    gtol = default_gtol("newton", theta.dtype) if gtol is None else gtol
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
                + _precision_hint(theta.dtype, gtol)
            )
        theta, value = candidate, new_value
    raise ConvergenceError(
        f"Newton did not converge in {max_iter} iterations: max|grad| = {norm:.3e} > gtol = {gtol:.1e}. "
        "Increase max_iter; if the parameters keep growing the minimum may not exist (e.g. separable data): "
        "add an L2 penalty." + _precision_hint(theta.dtype, gtol)
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
    gtol: float | None = None,
    max_iter: int = 2000,
    history_size: int = 20,
) -> Params:
    """Minimise by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``), full batch.

    Args:
        objective, init, mask: as in :func:`newton`.
        gtol: stop when ``max|grad| <= gtol``; default by dtype (``1e-7`` in float64, ``1e-4`` in float32).
        max_iter: cap on L-BFGS iterations (over restarts).
        history_size: number of curvature pairs kept.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        ConvergenceError: ``max|grad| > gtol`` at the end; the message gives the gradient norm.
    """
    theta, unflatten, function = _flat(objective, init, mask)
    gtol = default_gtol("lbfgs", theta.dtype) if gtol is None else gtol
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
        if norm <= gtol or not math.isfinite(norm):
            break
        optimizer.state.clear()  # restart from the current point with a fresh curvature history
    check_finite(variable.detach(), "the L-BFGS solution", "The objective diverged; start closer or add L2.")
    if norm > gtol:
        raise ConvergenceError(
            f"L-BFGS did not converge in {max_iter} iterations: max|grad| = {norm:.3e} > gtol = {gtol:.1e}. "
            "Increase max_iter, loosen gtol, or polish with vif.fit.newton (exact Hessian)."
            + _precision_hint(theta.dtype, gtol)
        )
    return unflatten(variable.detach())


def preconditioned_lbfgs(
    function: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    solve: Callable[[torch.Tensor], torch.Tensor],
    *,
    gtol: float,
    max_iter: int = 200,
    history: int = 20,
) -> tuple[torch.Tensor, bool]:
    """Minimise a flat ``function`` by L-BFGS whose initial inverse Hessian is ``solve`` (an SPD preconditioner).

    With ``solve`` the exact inverse Hessian at a nearby point, the first step is a Newton step and the
    curvature pairs correct for the difference between that Hessian and the current one, so few gradients
    are needed. Armijo backtracking; pairs with ``y.s <= 0`` are skipped.

    Returns:
        ``(theta, converged)`` with ``converged`` meaning ``max|grad| <= gtol``.
    """
    value_and_gradient = torch.func.grad_and_value(function)
    gradient, value = value_and_gradient(theta)
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    for _ in range(max_iter):
        if float(gradient.abs().max()) <= gtol:
            return theta, True
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
        s_k, y_k = candidate - theta, new_gradient - gradient
        if float(y_k @ s_k) > 0:
            pairs = (pairs + [(s_k, y_k, 1.0 / float(y_k @ s_k))])[-history:]
        theta, value, gradient = candidate, new_value, new_gradient
    return theta, float(gradient.abs().max()) <= gtol


NEWTON_LIMIT = 1000  # most parameters for which the saddle-free polish forms the dense Hessian


def saddle_free_newton(function: Callable, init: Params, mask: torch.Tensor, *, gtol: float | None = None,
                       max_iter: int = 3000, newton_steps: int = 50, history_size: int = 50) -> Params:
    """Minimise ``function(params, mask)`` by L-BFGS, then a pseudo-inverse, saddle-free Newton polish.

    For objectives with flat directions (symmetries such as rotations of an embedding) and saddles, where
    :func:`newton`'s Cholesky step does not apply.

    Args:
        function: scalar objective ``function(params, mask)``.
        init: starting parameters (not modified).
        mask: the fixed mask passed to ``function``.
        gtol: required ``max |grad|``; default by dtype (``1e-10`` in float64, ``1e-4`` in float32).
        max_iter: L-BFGS iterations.
        newton_steps: at most this many Newton steps after L-BFGS; the polish needs the dense Hessian
            and is skipped above ``NEWTON_LIMIT`` parameters (L-BFGS must then reach ``gtol`` alone).
        history_size: L-BFGS curvature pairs.

    Returns:
        The minimiser with the structure of ``init``, detached.

    Raises:
        ConvergenceError: ``max |grad| > gtol`` at the end.

    Notes:
        L-BFGS alone crawls along shallow directions. Each polish step is ``-sum_j (g . e_j / |lambda_j|) e_j``
        over the Hessian's eigenpairs with ``|lambda_j|`` above ``1e-9 * max |lambda|``: a pseudo-inverse, so
        flat directions are left alone, and the absolute value turns negative curvature (a saddle) into
        descent; a backtracking line search follows.
    """
    theta, unflatten = flatten(init)
    gtol = default_gtol("saddle_free_newton", theta.dtype) if gtol is None else gtol

    def flat(vector: torch.Tensor) -> torch.Tensor:
        return function(unflatten(vector), mask)

    variable = theta.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([variable], lr=1.0, max_iter=max_iter, tolerance_grad=gtol,
                                  tolerance_change=0.0, history_size=history_size, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = flat(variable)
        value.backward()
        return value

    optimiser.step(closure)
    steps = newton_steps if theta.numel() <= NEWTON_LIMIT else 0
    theta = _saddle_free_polish(flat, variable.detach(), gtol, steps)
    result = unflatten(theta)
    if isinstance(result, dict):
        return {name: value.detach().clone() for name, value in result.items()}
    return result.detach().clone()


def _saddle_free_polish(flat: Callable, theta: torch.Tensor, gtol: float, steps: int) -> torch.Tensor:
    gradient = grad(flat)
    for _ in range(steps):
        g = check_finite(gradient(theta), "the gradient during the Newton polish")
        if float(g.abs().max()) <= gtol:
            return theta
        values, vectors = torch.linalg.eigh(hessian_matrix(flat, theta))
        keep = values.abs() > 1e-9 * values.abs().max()
        step = -vectors[:, keep] @ ((vectors[:, keep].T @ g) / values[keep].abs())
        value, rate = flat(theta), 1.0
        rounding = 16.0 * torch.finfo(theta.dtype).eps * abs(float(value))  # the objective's resolution
        while rate > 1e-10 and not float(flat(theta + rate * step)) <= float(value + 1e-4 * rate * (g @ step)) + rounding:
            rate *= 0.5
        theta = theta + rate * step
    g_max = float(gradient(theta).abs().max())
    if g_max > gtol:
        raise ConvergenceError(
            f"fit stopped with max|grad| = {g_max:.2e} > gtol = {gtol:.0e} after L-BFGS and {steps} Newton "
            "steps; raise the L2 penalty (a flatter loss converges slowly), max_iter or newton_steps, or loosen gtol."
            + _precision_hint(theta.dtype, gtol)
        )
    return theta


def adam(objective: Callable, init: torch.Tensor, masks: torch.Tensor, *, epochs: int, lr: float = 0.01) -> torch.Tensor:
    """Full-batch Adam from ``init`` for each mask, vectorised: ``masks (B, n_units) -> params (B, n_params)``.

    Standard Adam (beta1 0.9, beta2 0.999, eps 1e-8, bias correction), ``epochs`` steps on
    ``objective(params, mask)`` with flat tensor parameters; no tolerance (a training protocol).
    """
    gradient = vmap(grad(objective))
    theta = init.expand(masks.shape[0], -1).clone()
    first, second = torch.zeros_like(theta), torch.zeros_like(theta)
    for step in range(1, epochs + 1):
        g = gradient(theta, masks)
        first = 0.9 * first + 0.1 * g
        second = 0.999 * second + 0.001 * g * g
        theta = theta - lr * (first / (1 - 0.9**step)) / (torch.sqrt(second / (1 - 0.999**step)) + 1e-8)
    return theta


def minibatch_adam(batch_objective: Callable[[torch.Tensor], Callable], init: dict[str, torch.Tensor],
                   mask: torch.Tensor, *, n_rows: int, epochs: int, lr: float = 1e-3, batch_size: int = 128,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """``torch.optim.Adam`` over seeded mini-batches of data rows: ``epochs`` passes, no tolerance.

    ``batch_objective(rows)`` returns the objective ``(params, mask) -> scalar`` on those data rows.
    """
    params = {name: value.detach().clone().requires_grad_(True) for name, value in init.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(n_rows, generator=generator, device="cpu").split(batch_size):
            optimizer.zero_grad()
            batch_objective(batch.to(mask.device))(params, mask).backward()
            optimizer.step()
    return {name: value.detach() for name, value in params.items()}
