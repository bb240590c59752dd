"""Removing many units at once: random-subset retraining, the linear datamodel, LDS and a second-order group step.

The linear datamodeling score (LDS; Ilyas et al. 2022, Park et al. 2023) asks how well an attribution
predicts the model trained on a *random subset* ``S`` of the units (each subset keeps a fraction ``alpha``):

* actual: ``f(theta_S) - f(theta_hat)`` from an exact refit on ``S`` (:func:`subset_changes`, which is
  :func:`vif.leave_one_out` with ``groups=`` the complements, so it is cached, resumable and joblib-parallel);
* predicted: the *linear datamodel* ``sum_{i not in S} tau_i`` of single-unit influences
  (:func:`linear_datamodel`), or a group estimate of the whole complement (``vif.influence(groups=...)``);
* score: for each target, the Spearman correlation across subsets, averaged over targets
  (:func:`vif.metrics.lds`).

Sign convention: every change is ``f(theta_without) - f(theta_hat)``.

:func:`second_order_influence` refines the group VIF step by one Neumann term of the Hessian of the objective
*without* the group (cost: one Hessian-vector product and one solve per group), see its docstring.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from .checks import build_problem, check_chunk_size, check_stationary
from .errors import InputError
from .loo import leave_one_out
from .params import Params, check_finite
from .problem import Problem
from .steps import Steps
from .target import Target

__all__ = ["Subsets", "sample_subsets", "subset_changes", "linear_datamodel", "second_order_influence"]


@dataclass(frozen=True)
class Subsets:
    """Seeded random subsets of the units.

    Attributes:
        kept: bool ``(n_subsets, n_units)``; ``kept[s, i]`` is True when unit ``i`` is in subset ``s``.
        alpha: fraction of units each subset keeps. seed: the seed that drew them.
    """

    kept: np.ndarray
    alpha: float
    seed: int

    def __len__(self) -> int:
        return int(self.kept.shape[0])

    @property
    def removed(self) -> list[np.ndarray]:
        """For each subset, the indices of the units it leaves out (its complement), sorted."""
        return [np.flatnonzero(~row) for row in self.kept]

    def indicators(self, like: torch.Tensor) -> torch.Tensor:
        """Removal indicators ``(n_subsets, n_units)`` (1 = removed) in the dtype and device of ``like``."""
        return torch.as_tensor(~self.kept, dtype=like.dtype, device=like.device)


def sample_subsets(n_units: int, n_subsets: int, alpha: float, seed: int) -> Subsets:
    """Draw ``n_subsets`` subsets each keeping ``round(alpha n_units)`` units, uniformly and seeded.

    Raises:
        InputError: ``alpha`` outside ``(0, 1)``, a subset that would keep or remove nothing, ``n_subsets < 1``.
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha (the fraction of units each subset keeps) must lie in (0, 1), got {alpha}.")
    if isinstance(n_subsets, bool) or int(n_subsets) != n_subsets or n_subsets < 1:
        raise InputError(f"n_subsets must be a positive int, got {n_subsets!r}.")
    size = int(round(alpha * n_units))
    if size < 1 or size >= n_units:
        raise InputError(f"alpha={alpha} keeps {size} of {n_units} units; every subset must keep and remove some.")
    rng = np.random.default_rng(seed)
    kept = np.zeros((int(n_subsets), n_units), dtype=bool)
    for row in kept:
        row[rng.permutation(n_units)[:size]] = True
    return Subsets(kept, float(alpha), int(seed))


def subset_changes(fit: object, params: Params, target: Callable, subsets: Subsets, *,
                   cache_dir: str | os.PathLike | None = None, n_jobs: int = 1, progress: bool = False,
                   **options: object) -> torch.Tensor:
    """Actual ``f(theta_S) - f(theta_hat)`` for every subset, by exact refits on it.

    Args:
        fit: a task or a bare ``fit(mask, init)`` (as in :func:`vif.leave_one_out`).
        params: ``theta_hat``. target: ``target(params)`` or mask-aware ``target(params, mask)``.
        subsets: from :func:`sample_subsets`.
        cache_dir, n_jobs, progress, options: passed to :func:`vif.leave_one_out` (``cache_key``, ``n_units``,
            ``warm_start``, ...). Each subset is one cached group removal: an interrupted run resumes.

    Returns:
        ``(n_subsets,)`` for a scalar target, else ``(n_subsets, n_targets)``.
    """
    return leave_one_out(fit, params, target, groups=subsets.removed, cache_dir=cache_dir, n_jobs=n_jobs,
                         progress=progress, **options)


def linear_datamodel(per_unit: torch.Tensor, subsets: Subsets) -> torch.Tensor:
    """The linear datamodel's prediction ``sum_{i not in S} tau_i`` for each subset.

    Args:
        per_unit: single-unit influences ``tau`` of shape ``(n_units,)`` or ``(n_units, n_targets)``.

    Returns:
        ``(n_subsets,)`` or ``(n_subsets, n_targets)``.
    """
    if per_unit.shape[0] != subsets.kept.shape[1]:
        raise InputError(f"per_unit has {per_unit.shape[0]} rows but the subsets cover {subsets.kept.shape[1]} units; "
                         "pass the influence of every unit (units=None).")
    return subsets.indicators(per_unit) @ per_unit


def second_order_influence(
    objective: object,
    params: Params,
    target: Callable,
    *,
    groups: Sequence | torch.Tensor,
    n_units: int | None = None,
    hessian: object = "exact",
    damping: float = 0.0,
    terms: int = 1,
    chunk_size: int = 64,
    target_takes_mask: bool | None = None,
) -> torch.Tensor:
    """Group VIF refined by Neumann terms of the Hessian without the group.

    The refit without group ``G`` solves ``g_{-G}(theta) = 0``; one Newton step from ``theta_hat`` is
    ``delta = -H_{-G}^-1 g_{-G}(theta_hat)`` with ``H_{-G} = H - Delta_G`` the Hessian without the group. Group VIF
    replaces ``H_{-G}`` by ``H`` (``delta_1 = -H^-1 g_{-G}``); expanding ``(H - Delta)^-1`` gives
    ``delta_{k+1} = delta_1 + H^-1 Delta_G delta_k`` (``terms`` times), where ``Delta_G v`` is the Hessian-vector
    product of ``L(., 1) - L(., 1 - r_G)``. Exact for a quadratic objective as ``terms -> infinity`` when
    ``||H^-1 Delta_G|| < 1``. The target change is ``grad f(theta_hat) . delta`` (at mask ``1 - r_G`` for a
    mask-aware target).

    Args:
        objective: a task or ``objective(params, mask)`` (then ``n_units`` is required).
        params: ``theta_hat``. target: ``target(params)`` or ``target(params, mask)``; scalar or ``(n_targets,)``.
        groups: as in :func:`vif.influence`. hessian, damping: iHVP backend, as in :func:`vif.influence`.
        terms: Neumann terms added to group VIF (``0`` returns group VIF).
        chunk_size: groups whose Hessian-vector products are batched together with vmap.

    Returns:
        ``(n_groups,)`` for a scalar target, else ``(n_groups, n_targets)``: predicted ``f(theta_-G) - f(theta_hat)``.
    """
    check_chunk_size(chunk_size)
    problem, removals, solve = build_problem(objective, params, n_units, True, None, groups, hessian, damping)
    check_stationary(problem, "raise", None, "vif.datamodels.second_order_influence")
    flat_target = Target(target, problem.theta, problem.unflatten, problem.n_units, target_takes_mask)
    problem.prefer_mask_jacobian("vif", len(removals))
    first = Steps(problem, removals, solve, None, "vif", 1.0).all("vif", 1.0, chunk_size)  # group VIF
    masks = problem.ones - removals.directions(torch.arange(len(removals), device=problem.theta.device))
    steps = first
    for _ in range(terms):
        products = torch.cat([_removed_hvps(problem, mask_chunk, step_chunk) for mask_chunk, step_chunk
                              in zip(torch.split(masks, chunk_size), torch.split(steps, chunk_size))])
        steps = first + solve(products.T).T
    if flat_target.mask_aware:
        result = torch.stack([flat_target.jacobian(mask) @ step for mask, step in zip(masks, steps)])
    else:
        result = steps @ flat_target.jacobian().T
    return flat_target.shaped(check_finite(result, "the second-order group influence"))


def _removed_hvps(problem: Problem, masks: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``Delta_j v_j`` for each row: Hessian-vector products of ``L(theta, 1) - L(theta, masks[j])`` at ``theta_hat``.

    Batched with vmap; an objective vmap cannot batch falls back to one group at a time.
    """
    def single(mask: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        def difference(point: torch.Tensor) -> torch.Tensor:
            return problem.flat_objective(point, problem.ones) - problem.flat_objective(point, mask)

        return jvp(grad(difference), (problem.theta,), (vector,))[1]

    try:
        return vmap(single)(masks, vectors)
    except RuntimeError:
        return torch.stack([single(mask, vector) for mask, vector in zip(masks, vectors)])
