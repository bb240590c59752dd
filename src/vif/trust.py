"""Trust diagnostics: for each removal, does the local quadratic model behind VIF hold?

VIF predicts the removal of unit (or group) ``i`` with one Newton step on the leave-one-out objective
``L_i(theta) = L(theta, 1 - r_i)`` from ``theta_hat``, using the full-data Hessian ``H`` (damped as in the
estimate)::

    delta_i = -H^-1 D_i,      D_i = g(1 - r_i) - g(1),      g(m) = grad_theta L(theta_hat, m)

When the removal moves the fit far (into another basin of a non-convex model, or along a flat direction
that the quadratic model misjudges), that step is wrong and no first-order estimate can follow. Two cheap
checks along the step, with no refit, tell which removals those are:

* ``ratio`` (the trust-region ratio): ``rho_i = [L_i(theta_hat + delta_i) - L_i(theta_hat)] / m_i`` with the
  model's predicted decrease ``m_i = g_i . delta_i + 1/2 delta_i^T H delta_i = g(1) . delta_i + 1/2 D_i . delta_i``
  (``g_i = g(1 - r_i)``; the identity uses ``H delta_i = -D_i``). ``rho_i = 1`` when ``L_i`` along the step is
  the quadratic the estimate assumes (curvature of the full-data ``H``); removals with high leverage or a
  change of basin move it away from 1.
* ``newton`` (the size of the next Newton step): ``||s_i|| / ||delta_i||`` with ``s_i = -H^-1 grad L_i(theta_hat
  + delta_i)``. It is 0 when the step lands on the leave-one-out minimiser; 1 means the step is off by its own
  size.
* ``correction`` (with a target ``f``): ``f(theta_hat + delta_i + s_i) - f(theta_hat) - grad f . delta_i``, the
  two-Newton-step estimate minus the VIF estimate, per target: it carries both the next step and the
  target's own curvature along the step, in the target's units.

Flags and recommended thresholds (validated against refits on a two-moons MLP and the karate skip-gram with
weak weight decay, :mod:`vif.experiments.trust`, chapter 3):

* ``unreliable[i, t] = risk[i, t] > 1`` with ``risk = |correction| / median_i |estimate|`` per target: the
  estimated error exceeds the typical effect (the median over the removals whose estimate is not zero:
  :func:`typical_effect`, so that a target most removals leave unchanged keeps a scale). This is the indicator
  to use with a target (ROC AUC for ``|error| > median |actual change|``: 0.99 on the MLP, 0.92 on karate).
* ``flagged[i] = newton[i] > 0.5``: the next Newton step is more than half the estimate's own step, so the
  removal leaves the region where the quadratic model holds; excluding flagged units raised the mean
  correlation with refits from 0.67 to 0.85 (MLP) and from 0.83 to 0.93 (karate).

A removal whose step leaves the objective's domain (``L_i(theta_hat + delta_i)`` or its gradient not finite)
is marked instead of failing the call: ``ratio`` NaN, ``newton`` inf (so ``flagged``), ``correction`` and
``risk`` NaN and ``unreliable`` True; its estimate is kept.

Cost: per removal two masked objective value-and-gradient passes (at ``theta_hat`` and at the stepped
point, vmapped in chunks) and two linear solves with the one factorised Hessian, i.e. about twice the VIF
call; no refit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import grad_and_value, jvp

from .checks import build_problem, check_chunk_size, check_stationary
from .errors import InputError
from .params import Params, check_finite
from .problem import Problem
from .removals import Removals
from .steps import Steps
from .target import Target

__all__ = ["TrustReport", "trust", "diagnose", "typical_effect", "RECOMMENDED_THRESHOLD", "RECOMMENDED_RISK"]

RECOMMENDED_THRESHOLD = 0.5
RECOMMENDED_RISK = 1.0


@dataclass
class TrustReport:
    """Per-removal trust diagnostics (rows follow the removals of the estimate).

    Attributes:
        ratio: ``(n_removals,)`` actual / predicted change of ``L_i`` along the VIF step (1 is ideal); NaN where
            the step leaves the objective's domain (non-finite ``L_i`` or gradient there).
        newton: ``(n_removals,)`` relative size of the next Newton step ``||s_i|| / ||delta_i||`` (0 is ideal);
            inf where the step leaves the domain.
        flagged: ``(n_removals,)`` bool, ``newton > threshold``: the removal's step is unreliable.
        threshold: the threshold used for ``flagged``.
        estimate: the VIF estimate ``grad f . delta_i`` (``(n_removals,)`` or ``(n_removals, n_targets)``; equal
            to :func:`vif.influence`'s), ``None`` without a target; likewise the next three.
        correction: two-step estimate minus the VIF estimate (NaN where the step leaves the domain).
        risk: ``|correction| / typical`` per target, ``typical`` the median ``|estimate|`` over removals whose
            estimate is not zero (:func:`typical_effect`): the estimated error in units of a typical effect.
        unreliable: ``risk > risk_threshold`` or NaN: do not trust these (removal, target) estimates.
        risk_threshold: the threshold used for ``unreliable``.
    """

    ratio: torch.Tensor
    newton: torch.Tensor
    flagged: torch.Tensor
    threshold: float
    estimate: torch.Tensor | None = None
    correction: torch.Tensor | None = None
    risk: torch.Tensor | None = None
    unreliable: torch.Tensor | None = None
    risk_threshold: float = RECOMMENDED_RISK


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
        raise InputError(f"threshold must be a positive number (recommended {RECOMMENDED_THRESHOLD}), got {threshold!r}.")
    return float(threshold)


def trust(
    objective: Callable,
    params: Params,
    target: Callable | None = None,
    *,
    n_units: int | None = None,
    hessian: object = "exact",
    damping: object = 0.0,
    units: Sequence[int] | torch.Tensor | None = None,
    groups: Sequence | torch.Tensor | None = None,
    chunk_size: int = 64,
    vectorize: bool = True,
    unit_params: Sequence | None = None,
    check_unit_params: bool = True,
    threshold: float = RECOMMENDED_THRESHOLD,
    risk_threshold: float = RECOMMENDED_RISK,
    target_takes_mask: bool | None = None,
    on_unconverged: str = "raise",
    stationarity_tol: float | None = None,
) -> TrustReport:
    """Trust diagnostics of the VIF estimate (``method="vif"``, ``eps=1``) for every unit or group.

    Args:
        objective: as in :func:`vif.influence`, and so are ``params``, ``n_units``, ``hessian``, ``damping``,
            ``units``, ``groups``, ``chunk_size``, ``vectorize``, ``unit_params``, ``check_unit_params``,
            ``on_unconverged`` and ``stationarity_tol`` (use the same values as the estimate).
        target: optional ``target(params)`` or mask-aware ``target(params, mask)``; gives ``correction``.
        threshold: ``newton`` above it is flagged (default :data:`RECOMMENDED_THRESHOLD`).
        risk_threshold: ``risk`` above it is unreliable (default :data:`RECOMMENDED_RISK`).
        target_takes_mask: override the signature detection of a mask-aware target.

    Returns:
        A :class:`TrustReport`. See the module docstring for the formulas.
    """
    threshold, risk_threshold = _check_threshold(threshold), _check_threshold(risk_threshold)
    check_chunk_size(chunk_size)
    problem, removals, solve = build_problem(objective, params, n_units, vectorize, units, groups, hessian, damping)
    check_stationary(problem, on_unconverged, stationarity_tol, "vif.trust")
    steps = Steps(problem, removals, solve, unit_params, "vif", 1.0, chunk_size, check_unit_params)
    flat_target = None if target is None else Target(target, problem.theta, problem.unflatten, problem.n_units,
                                                       target_takes_mask)
    return diagnose(problem, removals, steps, flat_target, chunk_size, threshold, risk_threshold)


def diagnose(problem: Problem, removals: Removals, steps: Steps, flat_target: Target | None, chunk_size: int,
             threshold: float = RECOMMENDED_THRESHOLD, risk_threshold: float = RECOMMENDED_RISK) -> TrustReport:
    """The :class:`TrustReport` of a built problem: the steps (and factorised solver) of the estimate itself.

    :func:`trust` builds the problem and calls this; ``vif.influence(..., diagnostics=True)`` calls it with the
    problem, removals, steps and target of its own estimate, so nothing is built or factorised twice.
    """
    value_and_gradient = grad_and_value(problem.flat_objective)
    rows_out: list[tuple[torch.Tensor, ...]] = []
    for rows in torch.split(torch.arange(len(removals), device=problem.theta.device), max(1, chunk_size)):
        masks = problem.ones - removals.directions(rows)
        gradients, values = problem.map(lambda mask: value_and_gradient(problem.theta, mask), masks)
        differences = gradients - problem.full_gradient
        delta = steps(rows, differences)
        stepped_gradients, stepped_values = problem.map(
            lambda mask, step: value_and_gradient(problem.theta + step, mask), masks, delta)
        # a step that leaves the objective's domain marks its removal (module notes) instead of failing the call
        outside = ~(torch.isfinite(stepped_values) & torch.isfinite(stepped_gradients).all(dim=1))
        stepped_gradients = torch.where(outside[:, None], torch.zeros_like(stepped_gradients), stepped_gradients)
        predicted = delta @ problem.full_gradient + 0.5 * (differences * delta).sum(dim=1)
        actual = stepped_values - values
        ratio = actual / torch.where(predicted == 0, torch.full_like(predicted, -torch.finfo(predicted.dtype).tiny),
                                     predicted)
        second = steps(rows, stepped_gradients)  # s_i = -H^-1 grad L_i(theta_hat + delta_i)
        newton = second.norm(dim=1) / delta.norm(dim=1).clamp_min(torch.finfo(delta.dtype).tiny)
        ratio = torch.where(outside, torch.full_like(ratio, torch.nan), ratio)
        newton = torch.where(outside, torch.full_like(newton, torch.inf), newton)
        pair = (None, None) if flat_target is None else _directional(problem, flat_target, masks, delta, second,
                                                                     outside)
        rows_out.append((ratio, newton, *pair))
    ratio = torch.cat([r[0] for r in rows_out]) if rows_out else problem.theta.new_zeros(0)
    newton = torch.cat([r[1] for r in rows_out]) if rows_out else problem.theta.new_zeros(0)
    estimate = correction = risk = unreliable = None
    if flat_target is not None and rows_out:
        estimate, correction = torch.cat([r[2] for r in rows_out]), torch.cat([r[3] for r in rows_out])
        risk = correction.abs() / typical_effect(estimate)
        unreliable = ~(risk <= risk_threshold)  # NaN risk (a step outside the domain) is unreliable
        if flat_target.scalar:
            estimate, correction, risk, unreliable = estimate[:, 0], correction[:, 0], risk[:, 0], unreliable[:, 0]
    return TrustReport(ratio, newton, newton > threshold, threshold, estimate, correction, risk, unreliable,
                       risk_threshold)


def typical_effect(estimate: torch.Tensor) -> torch.Tensor:
    """Per target, the median ``|estimate|`` over removals whose estimate is not zero, ``(n_targets,)``.

    Zeros (``|e| <= 16 eps max|e|``: removals that change nothing, e.g. off the margin of a hinge loss) are left
    out, so the scale cannot vanish while some effect is not zero; a target with no such effect gets ``tiny``.
    """
    size = estimate.abs()
    floor = 16 * torch.finfo(size.dtype).eps * size.amax(dim=0, keepdim=True)
    kept = torch.where(size > floor, size, torch.full_like(size, torch.nan))
    typical = kept.nanmedian(dim=0).values
    return torch.nan_to_num(typical, nan=0.0).clamp_min(torch.finfo(size.dtype).tiny)


def _directional(problem: Problem, flat_target: Target, masks: torch.Tensor, delta: torch.Tensor,
                 second: torch.Tensor, outside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(theta_hat + delta_i + s_i, m_i) - f(theta_hat, m_i) - grad f(theta_hat, m_i) . delta_i``, ``(k, n_targets)``.

    The two-Newton-step estimate minus the VIF estimate: one jvp at ``theta_hat`` and one evaluation per row.
    Returns ``(estimate, correction)``: the VIF estimate ``grad f . delta_i`` comes with the jvp. Rows whose
    step left the objective's domain (``outside``) get a NaN correction.
    """
    def one(mask: torch.Tensor, step: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, linear = jvp(lambda theta: flat_target(theta, mask), (problem.theta,), (step,))
        return linear, flat_target(problem.theta + step + direction, mask) - value - linear

    linear, correction = problem.map(one, masks, delta, second)
    check_finite(linear, "the VIF estimate on the target")
    check_finite(correction[~outside], "the target after two Newton steps")
    return linear, torch.where(outside[:, None], torch.full_like(correction, torch.nan), correction)
