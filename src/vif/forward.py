"""Forward-INF (Ko et al. 2024) adapted to a masked objective: gradient steps on the target, forward passes per unit.

The *mirrored influence* idea: instead of asking how each unit moves the target, move the parameters towards
the target and ask how each unit's loss responds. With a mask there is no per-unit loss; its analogue is the
*mask difference* ``d_r(theta) = L(theta, 1) - L(theta, 1 - r)``, the part of the objective that removal ``r``
deletes (one unit, or a group). For target ``f_t``:

1. take ``steps`` gradient-descent steps on ``f_t`` from ``theta_hat``, each of length ``step_size``
   (``theta_{k+1} = theta_k - step_size grad f_t(theta_k) / ||grad f_t(theta_hat)||``), ending at ``theta_t``;
2. score removal ``r`` by ``[d_r(theta_hat) - d_r(theta_t)] / (steps * eta_t)``, ``eta_t`` the scale of a step.

To first order the score is ``grad f_t . grad d_r``, whereas VIF is ``grad f_t . H^-1 grad d_r``: Forward-INF
is VIF with the inverse Hessian replaced by the identity, computed with forward passes of the objective only.
Its sign follows the package convention (positive: removing raises ``f``) when ``H`` is close to a multiple of
the identity; its scale is not that of a parameter change, so compare it by correlation. A mask-aware target
is stepped at the full mask ``m = 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import grad, vmap

from .errors import InputError
from .params import Params, check_finite, flatten
from .problem import resolve_task
from .removals import Removals
from .target import Target

__all__ = ["forward_influence"]


def forward_influence(
    objective: object,
    params: Params,
    target: Callable,
    *,
    n_units: int | None = None,
    units: Sequence[int] | torch.Tensor | None = None,
    groups: Sequence | torch.Tensor | None = None,
    steps: int = 3,
    step_size: float = 1e-3,
    chunk_size: int = 256,
    target_takes_mask: bool | None = None,
) -> torch.Tensor:
    """Forward-INF scores of every unit (or group) for every target; no Hessian, no per-unit gradient.

    Args:
        objective: a task or ``objective(params, mask)`` (then ``n_units`` is required).
        params: ``theta_hat``. target: ``target(params)`` or ``target(params, mask)``; scalar or ``(n_targets,)``.
        units, groups: which removals to score, as in :func:`vif.influence`.
        steps: gradient steps on each target. step_size: length of each step relative to ``max(||theta_hat||, 1)``.
        chunk_size: masks evaluated together under vmap.

    Returns:
        ``(n_removals,)`` for a scalar target, else ``(n_removals, n_targets)``; approximately
        ``grad f_t . grad d_r`` (see the module docstring).

    Raises:
        InputError: ``steps < 1`` or ``step_size <= 0``; a target whose gradient is zero at ``theta_hat``.
    """
    if steps < 1 or not step_size > 0:
        raise InputError(f"steps must be >= 1 and step_size > 0, got steps={steps}, step_size={step_size}.")
    objective_fn, n_units, _ = resolve_task(objective, n_units)
    theta, unflatten = flatten(params)
    theta = theta.detach()
    removals = Removals.select(n_units, theta, units, groups)
    checked_target = Target(target, theta, unflatten, n_units, target_takes_mask)
    ones = checked_target.ones

    def flat_target(vector: torch.Tensor) -> torch.Tensor:
        return checked_target(vector, ones)  # stepped at the full mask

    n_targets = checked_target.n_targets
    scale = step_size * max(float(theta.norm()), 1.0)
    endpoints, etas = [], []
    for t in range(n_targets):
        gradient_t = grad(lambda vector, t=t: flat_target(vector)[t])
        first = check_finite(gradient_t(theta), "the gradient of the target")
        norm = float(first.norm())
        if norm == 0.0:
            raise InputError(f"target {t} has zero gradient at params; Forward-INF has no direction to step in.")
        point = theta
        for _ in range(steps):
            point = point - (scale / norm) * gradient_t(point)
        endpoints.append(point)
        etas.append(steps * scale / norm)
    points = torch.stack([theta, *endpoints])  # (1 + n_targets, n_params)

    def loss(vector: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return objective_fn(unflatten(vector), mask)

    full = vmap(lambda vector: loss(vector, ones))(points)  # (1 + n_targets,)
    rows = []
    for chunk in torch.split(torch.arange(len(removals), device=theta.device), max(1, chunk_size)):
        masks = ones - removals.directions(chunk)
        masked = torch.stack([vmap(lambda mask, point=point: loss(point, mask))(masks) for point in points])  # (1 + T, chunk)
        differences = full[:, None] - masked  # d_r at each point
        rows.append(((differences[:1] - differences[1:]) / theta.new_tensor(etas)[:, None]).T)
    return checked_target.shaped(check_finite(torch.cat(rows), "the Forward-INF scores"))
