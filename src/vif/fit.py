"""Every optimiser of the package, behind one signature: ``optimiser(objective, init, mask, *, gtol, max_iter, ...)``.

The tight solvers minimise ``objective(params, mask)`` over ``params`` for a fixed ``mask`` and raise
:class:`~vif.errors.ConvergenceError` when the final gradient's largest absolute entry is above ``gtol``
(the message gives the iterations and that gradient norm): an unconverged fit makes every influence estimate
and every leave-one-out difference unreliable. ``gtol=None`` is the default of the dtype (:func:`default_gtol`).
The returned parameters have the structure of ``init`` (tensor or dict) and are detached.

:func:`newton` (exact Hessian, Cholesky) and :func:`lbfgs`; :func:`preconditioned_lbfgs` (warm refits, or Newton
rounds that re-factorise a dense Hessian); :func:`lbfgs_newton` (L-BFGS, then Newton up to :data:`DENSE_LIMIT`
parameters); :func:`saddle_free_newton` and :func:`chord_newton` (pseudo-inverse ``|H|`` steps, for flat
directions and saddles).

:func:`adam` and :func:`minibatch_adam` reproduce the papers' first-order training protocols (a fixed number
of epochs, no tolerance): they are ground truths of a protocol, not minimisers. The loop bodies live in the
private ``vif._optimisers``; this module is the public home.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad, vmap

from ._optimisers import (
    abs_pinv,
    chord_steps,
    default_gtol,
    flat_objective,
    newton_steps,
    precision_hint,
    preconditioned_steps,
    saddle_free_polish,
    torch_lbfgs,
)
from .errors import ConvergenceError, InputError
from .params import Params, check_finite
from .solvers import cholesky_solver

__all__ = ["newton", "lbfgs", "preconditioned_lbfgs", "lbfgs_newton", "saddle_free_newton", "chord_newton",
           "saddle_free_inverse", "gradient_norm", "default_gtol", "adam", "minibatch_adam", "DENSE_LIMIT",
           "NEWTON_LIMIT"]

DENSE_LIMIT = 3000
"""Most parameters for which a fit forms the dense Hessian and factorises it (Cholesky): the one size rule.

:func:`lbfgs_newton` polishes with :func:`newton` up to it. The saddle-free polish factorises by an
eigendecomposition instead, about ``9 n^3`` flops against ``n^3 / 3`` for Cholesky (Golub and Van Loan):
27 times the work, so the same budget allows a third of the size, :data:`NEWTON_LIMIT`.
"""

NEWTON_LIMIT = DENSE_LIMIT // 3
"""Most parameters for which :func:`saddle_free_newton` polishes (an eigendecomposition): ``DENSE_LIMIT / 3``."""


def gradient_norm(objective: Callable, params: Params, mask: torch.Tensor) -> float:
    """Largest absolute entry of ``grad_params objective(params, mask)``: the convergence measure used here."""
    theta, _, function = flat_objective(objective, params, mask)
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
            cause when the parameters are float32). Also when the problem has **no finite minimiser**: the
            message starts "no finite minimiser:" and names the coordinate (:func:`vif.params.flatten` order)
            that runs off.

    Notes:
        Run-off (monotone likelihood in Cox regression, e.g. a covariate level left with no events by a
        removal; separable data in logistic regression without penalty): the objective decreases towards an
        infimum at infinity along a direction of vanishing curvature, so the gradient test passes far from
        any minimiser. It is read from the last three Newton steps (``vif._optimisers.run_off``): each at
        least a fifth of the one before, pairwise cosine above 0.9 and the last one's largest entry above
        ``1e-3 max(1, max|theta|)``, where a strict minimum's steps contract quadratically. Cost: a few norms
        of steps already computed.
    """
    theta, unflatten, function = flat_objective(objective, init, mask)
    gtol = default_gtol("newton", theta.dtype) if gtol is None else gtol
    return unflatten(newton_steps(function, theta, gtol=gtol, max_iter=max_iter).detach())


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
    theta, unflatten, function = flat_objective(objective, init, mask)
    gtol = default_gtol("lbfgs", theta.dtype) if gtol is None else gtol
    variable, optimizer, closure = torch_lbfgs(function, theta, gtol=gtol, max_iter=max_iter, history_size=history_size,
                                               max_eval=2 * max_iter)
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
            + precision_hint(theta.dtype, gtol)
        )
    return unflatten(variable.detach())


def preconditioned_lbfgs(
    objective: Callable,
    init: Params,
    mask: torch.Tensor,
    *,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    hessian: Callable[[Params], torch.Tensor] | None = None,
    refresh: int | None = None,
    gtol: float | None = None,
    max_iter: int = 200,
    history_size: int = 20,
) -> Params:
    """Minimise by L-BFGS whose initial inverse Hessian is a preconditioner, with Armijo backtracking.

    With the exact inverse Hessian at a nearby point (a leave-one-out refit from the full-data fit), the
    first step is a Newton step and the curvature pairs correct for the difference between that Hessian and
    the current one, so few gradients are needed. Pairs with ``y.s <= 0`` are skipped.

    Args:
        objective, init, mask: as in :func:`newton`.
        preconditioner: ``g -> M^-1 g`` for ``(n_params,)`` vectors in :func:`vif.params.flatten` order, ``M``
            symmetric positive definite (e.g. :func:`vif.solvers.cholesky_solver` of a nearby Hessian).
        hessian: instead of ``preconditioner``, ``params -> H`` dense ``(n_params, n_params)``, factorised by
            Cholesky at ``init`` and again every ``refresh`` iterations (Newton rounds).
        refresh: iterations per round; each round restarts the curvature history (and factorises ``hessian``
            again). Default ``max_iter``: one round.
        gtol: stop when ``max|grad| <= gtol``; default by dtype (``1e-7`` in float64, ``1e-4`` in float32).
        max_iter: cap on iterations over all rounds.
        history_size: number of curvature pairs kept.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        InputError: not exactly one of ``preconditioner`` and ``hessian``, or ``refresh < 1``.
        NotPositiveDefiniteError: ``hessian`` returned a matrix that is not positive definite.
        ConvergenceError: ``max|grad| > gtol`` after ``max_iter`` iterations; the message gives the gradient norm.
    """
    if (preconditioner is None) == (hessian is None):
        raise InputError("pass exactly one of preconditioner (a fixed g -> M^-1 g) and hessian (params -> dense H).")
    refresh = max(max_iter, 1) if refresh is None else refresh
    if refresh < 1:
        raise InputError(f"refresh must be a positive number of iterations, got {refresh!r}.")
    theta, unflatten, function = flat_objective(objective, init, mask)
    gtol = default_gtol("lbfgs", theta.dtype) if gtol is None else gtol
    used, norm = 0, math.inf
    while True:
        steps = min(refresh, max_iter - used)
        solve = preconditioner if hessian is None else cholesky_solver(hessian(unflatten(theta)), max_condition=math.inf)
        theta, norm = preconditioned_steps(function, theta, solve, gtol=gtol, max_iter=steps, history_size=history_size)
        used += steps
        if norm <= gtol:
            return unflatten(theta.detach())
        if math.isnan(norm):
            raise ConvergenceError(
                f"preconditioned L-BFGS left the objective's domain after at most {used} iterations (a step with a "
                "non-finite objective even at the smallest size). Start closer to the minimiser, refresh the "
                "preconditioner more often, or check the data for NaN."
            )
        if used >= max_iter:
            break
    raise ConvergenceError(
        f"preconditioned L-BFGS did not converge in {max_iter} iterations: max|grad| = {norm:.3e} > gtol = "
        f"{gtol:.1e}. Increase max_iter, refresh the preconditioner more often, or check the data for NaN."
        + precision_hint(theta.dtype, gtol)
    )


def lbfgs_newton(
    objective: Callable,
    init: Params,
    mask: torch.Tensor,
    *,
    gtol: float | None = None,
    max_iter: int = 20000,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    history_size: int = 50,
) -> Params:
    """Minimise by L-BFGS, then Newton steps with the dense Hessian up to :data:`DENSE_LIMIT` parameters.

    With ``preconditioner`` (e.g. the factorised full-data Hessian, for a warm refit) it first takes at most
    100 steps of :func:`preconditioned_lbfgs`; if they do not reach ``gtol``, the fit goes on from their last
    iterate when it lowered the objective, else from ``init`` (a diverged try). Then, up to
    :data:`DENSE_LIMIT` parameters, :func:`lbfgs` to ``max|grad| <= max(gtol, 1e-3)`` (its failure is
    forgiven) and :func:`newton` (100 iterations) to ``gtol``; above, :func:`lbfgs` alone to ``gtol``.

    Args:
        objective, init, mask: as in :func:`newton`.
        gtol: the final ``max|grad|``; default by dtype (``1e-9`` in float64, ``1e-4`` in float32).
        max_iter: cap on L-BFGS iterations.
        preconditioner: ``g -> M^-1 g`` as in :func:`preconditioned_lbfgs`, or ``None``.
        history_size: L-BFGS curvature pairs.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        ConvergenceError: from :func:`newton`, or from :func:`lbfgs` above :data:`DENSE_LIMIT` parameters.
    """
    theta, unflatten, function = flat_objective(objective, init, mask)
    gtol = default_gtol("newton", theta.dtype) if gtol is None else gtol
    if preconditioner is not None:
        solution, norm = preconditioned_steps(function, theta, preconditioner, gtol=gtol, max_iter=100, history_size=20)
        if norm <= gtol:
            return unflatten(solution.detach())
        value, initial = function(solution), objective(init, mask)
        if bool(torch.isfinite(value)) and float(value) < float(initial):  # else restart from ``init`` (a diverged try)
            init = unflatten(solution.detach())
    small = theta.numel() <= DENSE_LIMIT
    try:
        init = lbfgs(objective, init, mask, gtol=max(gtol, 1e-3) if small else gtol, max_iter=max_iter,
                     history_size=history_size)
    except ConvergenceError:
        if not small:
            raise
    return newton(objective, init, mask, gtol=gtol, max_iter=100) if small else init


def saddle_free_newton(objective: Callable, init: Params, mask: torch.Tensor, *, gtol: float | None = None,
                       max_iter: int = 3000, newton_steps: int = 50, history_size: int = 50) -> Params:
    """Minimise ``objective(params, mask)`` by L-BFGS, then a pseudo-inverse, saddle-free Newton polish.

    For objectives with flat directions (symmetries such as rotations of an embedding) and saddles, where
    :func:`newton`'s Cholesky step does not apply.

    Args:
        objective: scalar objective ``objective(params, mask)``.
        init: starting parameters (not modified).
        mask: the fixed mask passed to ``objective``.
        gtol: required ``max |grad|``; default by dtype (``1e-10`` in float64, ``1e-4`` in float32).
        max_iter: L-BFGS iterations.
        newton_steps: at most this many Newton steps after L-BFGS; the polish needs the dense Hessian's
            eigendecomposition and is skipped above :data:`NEWTON_LIMIT` parameters (L-BFGS must then reach
            ``gtol`` alone).
        history_size: L-BFGS curvature pairs.

    Returns:
        The minimiser with the structure of ``init``, detached.

    Raises:
        ConvergenceError: ``max |grad| > gtol`` at the end; the message gives the L-BFGS iterations, and
            below float64 says first when the gradient stopped at the dtype's rounding floor.

    Notes:
        L-BFGS alone crawls along shallow directions. Each polish step is ``-sum_j (g . e_j / |lambda_j|) e_j``
        over the Hessian's eigenpairs with ``|lambda_j|`` above ``1e-9 * max |lambda|``: a pseudo-inverse, so
        flat directions are left alone, and the absolute value turns negative curvature (a saddle) into
        descent; a backtracking line search follows. Below float64 the polish also runs past ``gtol`` while
        each step at least halves ``max|grad|`` (float32's default ``1e-4`` is met far above its floor, where
        L-BFGS alone would stop): one or two more eigendecompositions, and the best iterate is returned.
    """
    theta, unflatten, function = flat_objective(objective, init, mask)
    gtol = default_gtol("saddle_free_newton", theta.dtype) if gtol is None else gtol
    variable, optimizer, closure = torch_lbfgs(function, theta, gtol=gtol, max_iter=max_iter, history_size=history_size)
    optimizer.step(closure)
    steps = newton_steps if theta.numel() <= NEWTON_LIMIT else 0
    iterations = int(optimizer.state[variable].get("n_iter", 0))
    result = unflatten(saddle_free_polish(function, variable.detach(), gtol, steps, iterations))
    if isinstance(result, dict):
        return {name: value.detach().clone() for name, value in result.items()}
    return result.detach().clone()


def chord_newton(objective: Callable, init: Params, mask: torch.Tensor, *, inverse: torch.Tensor | None = None,
                 gtol: float | None = None, max_iter: int = 40, refreshes: int = 10) -> Params:
    """Minimise by chord steps ``theta <- theta - |H_0|^+ g(theta)`` with one cached matrix, refreshed on a stall.

    For refits from a nearby minimiser (removing one of ``n`` units changes the Hessian by ``O(1/n)``): the
    pseudo-inverse ``|H_0|^+`` at the full-data fit (:func:`saddle_free_inverse`) is formed once and reused
    by every refit. Once the gradient stops shrinking by 10% a step, every later step recomputes ``|H|^+`` at
    the current point and mask (saddle-free Newton without a line search), at most ``refreshes`` times.

    Args:
        objective, init, mask: as in :func:`newton`.
        inverse: ``|H_0|^+`` ``(n_params, n_params)`` in :func:`vif.params.flatten` order; ``None`` recomputes
            it from the first step.
        gtol: stop when ``max|grad| <= gtol``; default by dtype (``1e-10`` in float64, ``1e-4`` in float32).
        max_iter: cap on steps (``max_iter + 1`` gradients).
        refreshes: cap on Hessian eigendecompositions.

    Returns:
        The minimiser, with the structure of ``init``.

    Raises:
        ConvergenceError: ``max|grad| > gtol`` after ``max_iter`` steps, when the gradient stalls with no refresh
            left, or when it becomes non-finite; the message gives the iteration and the gradient norm.
    """
    theta, unflatten, function = flat_objective(objective, init, mask)
    gtol = default_gtol("saddle_free_newton", theta.dtype) if gtol is None else gtol
    return unflatten(chord_steps(function, theta, inverse, gtol=gtol, max_iter=max_iter, refreshes=refreshes).detach())


def saddle_free_inverse(objective: Callable, params: Params, mask: torch.Tensor) -> torch.Tensor:
    """``|H|^+`` ``(n_params, n_params)`` of ``objective`` at ``params``: the matrix of :func:`chord_newton`'s steps.

    The Hessian's pseudo-inverse with its eigenvalues in absolute value, those at or below ``1e-9`` times the
    largest dropped (symmetries), as in :func:`saddle_free_newton`'s polish; :func:`vif.params.flatten` order.
    """
    theta, _, function = flat_objective(objective, params, mask)
    return abs_pinv(function, theta)


def adam(objective: Callable, init: torch.Tensor, masks: torch.Tensor, *, epochs: int, lr: float = 0.01
         ) -> torch.Tensor:
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
