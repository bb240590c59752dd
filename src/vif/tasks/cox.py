"""Cox proportional-hazards regression with a unit mask: the objective VIF differentiates, and its fit.

The units are **patients**. A patient appears in two places of the Cox partial likelihood: in its own
event term (if it had an event) and in the risk set of every earlier event. Deleting patient ``i``
(``mask[i] = 0``) removes both; the mask acts as a case weight, so values in ``(0, 1)`` down-weight a
patient as survival packages do with case weights.

Scale convention: the objective is the **summed** negative partial log-likelihood (not the mean over
events) plus ``l2 / 2 * ||beta||^2``. VIF is invariant to an overall scale of the objective; ``l2`` is not,
so ``l2`` is a penalty on the summed likelihood (lifelines' ``penalizer`` is on the mean; see its docs).

With weights ``w`` (the mask), linear predictor ``eta = X beta``, event times sorted ascending and tie
groups ``g`` (patients with equal time), risk-set sum ``S_g = sum_{j: t_j >= t_g} w_j exp(eta_j)``:

* Breslow: ``L = -sum_i w_i d_i eta_i + sum_i w_i d_i log S_{g(i)}``
* Efron (weighted, as R's ``survival::coxph``): within group ``g`` let ``m_g`` be the number of events
  with positive weight, ``W_g`` their summed weight and ``D_g = sum_{events in g} w_j exp(eta_j)``; then
  ``L = -sum_i w_i d_i eta_i + sum_g (W_g / m_g) sum_{r=0}^{m_g-1} log(S_g - (r / m_g) D_g)``.

For a 0/1 mask both equal the objective on the data with the zero-weight patients deleted; a risk set
that the mask empties contributes exactly zero (never ``log 0`` or NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..fit import newton
from ..params import check_mask
from ._penalty import check_l2
from .cox_gradients import CoxGradients

TIES = ("breslow", "efron")

__all__ = ["TIES", "CoxData", "CoxRegression", "negative_log_partial_likelihood", "prepare", "objective", "fit",
           "relative_hazard", "log_partial_likelihood"]


@dataclass(frozen=True)
class CoxData:
    """Survival data sorted by time once, with the index tensors the vectorised objective needs.

    Attributes:
        x: covariates sorted by time, shape ``(n, p)``.
        event: event indicators (1.0 event, 0.0 censored) sorted by time, shape ``(n,)``.
        order: ``order[k]`` is the original row of sorted position ``k``, shape ``(n,)``.
        group: tie-group id of each sorted position (0, 1, ... in time order), shape ``(n,)``.
        start: first sorted position of each position's tie group, shape ``(n,)``.
        n_groups: number of distinct times.
    """

    x: torch.Tensor
    event: torch.Tensor
    order: torch.Tensor
    group: torch.Tensor
    start: torch.Tensor
    n_groups: int

    @property
    def n(self) -> int:
        """Number of patients (units)."""
        return int(self.x.shape[0])


def _as_tensor(value: Any, name: str, dtype: torch.dtype | None) -> torch.Tensor:
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    # a field of a numpy structured array (``y["time"]``) is a strided view torch cannot wrap: copy it contiguous
    tensor = torch.as_tensor(np.ascontiguousarray(value) if not isinstance(value, torch.Tensor) else value)
    if dtype is not None:
        tensor = tensor.to(dtype)
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name} has {int((~torch.isfinite(tensor)).sum())} NaN or infinite entries; drop or impute them.")
    return tensor


def prepare(X: Any, time: Any, event: Any) -> CoxData:
    """Validate survival data and sort it by time (stable, so ties keep their input order).

    Args:
        X: covariates, array-like ``(n, p)`` (a float tensor keeps its dtype; anything else becomes float64).
        time: follow-up times, array-like ``(n,)``, finite and ``>= 0``. Only their order enters the partial
            likelihood, so a time of 0 is accepted (as lifelines and scikit-survival do): such a patient is at
            risk at every event time and ties with the other zeros.
        event: event indicators, array-like ``(n,)`` with values 0 (censored) or 1 (event).

    Raises:
        InputError: wrong shapes, non-finite values, negative times, events not 0/1, or no event.
    """
    dtype = X.dtype if isinstance(X, torch.Tensor) and X.is_floating_point() else torch.float64
    x = _as_tensor(X, "X", dtype)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"X must have shape (n_patients, n_covariates), got {tuple(x.shape)}.")
    n = x.shape[0]
    t = _as_tensor(time, "time", torch.float64)
    d = _as_tensor(event, "event", dtype)
    for name, value in (("time", t), ("event", d)):
        if value.shape != (n,):
            raise InputError(f"{name} must have shape ({n},) to match X, got {tuple(value.shape)}.")
    if bool((t < 0).any()):
        raise InputError(f"time has {int((t < 0).sum())} negative entries (the first {float(t[t < 0][0]):g}); "
                         "follow-up times must be >= 0: check the time origin.")
    if not bool(((d == 0) | (d == 1)).all()):
        raise InputError("event must be 0 (censored) or 1 (event); convert booleans or codes first.")
    if not bool((d == 1).any()):
        raise InputError("event has no 1s: the Cox partial likelihood needs at least one observed event.")
    order = torch.argsort(t, stable=True)
    ts = t[order]
    new_group = torch.ones(n, dtype=torch.bool, device=t.device)
    new_group[1:] = ts[1:] != ts[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    first = torch.nonzero(new_group).squeeze(1)
    return CoxData(x=x[order], event=d[order], order=order, group=group, start=first[group],
                   n_groups=int(first.numel()))


def _negative_log_partial_likelihood(data: CoxData, beta: torch.Tensor, w: torch.Tensor, ties: str) -> torch.Tensor:
    """Summed negative partial log-likelihood for weights ``w`` in sorted order, shape ``(n,)``."""
    return negative_log_partial_likelihood(data, data.x @ beta, w, ties)


def negative_log_partial_likelihood(data: CoxData, eta: torch.Tensor, w: torch.Tensor, ties: str) -> torch.Tensor:
    """Summed negative partial log-likelihood of risk scores ``eta`` ``(n,)`` with case weights ``w`` ``(n,)``.

    Both in **sorted** order (``data.order``); ``ties`` is ``"breslow"`` or ``"efron"``. The loss of any model
    whose log-hazard is ``eta`` (a neural network's output, say); it is convex in ``eta``.
    """
    shift = eta.detach().max()  # any constant works; the max keeps exp() <= 1 (no overflow)
    ew = w * torch.exp(eta - shift)
    risk = torch.flip(torch.cumsum(torch.flip(ew, (0,)), 0), (0,))[data.start]  # S_g of each position
    wd = w * data.event
    if ties == "breslow":
        weight, denominator = wd, risk
    else:
        live = data.event * (w > 0).to(w.dtype)  # events still present
        before = torch.cumsum(live, 0) - live
        rank = before - before[data.start]  # r: present events before this one in its tie group
        zeros = torch.zeros(data.n_groups, dtype=w.dtype, device=w.device)
        count = zeros.index_add(0, data.group, live)[data.group]
        tied_weight = zeros.index_add(0, data.group, wd)[data.group]
        tied_risk = zeros.index_add(0, data.group, data.event * ew)[data.group]
        safe_count = torch.where(count > 0, count, torch.ones_like(count))
        weight = live * tied_weight / safe_count
        denominator = risk - rank / safe_count * tied_risk
    present = weight != 0
    log_denominator = torch.log(torch.where(present, denominator, torch.ones_like(denominator))) + shift
    return -(wd * eta).sum() + (weight * torch.where(present, log_denominator, torch.zeros_like(eta))).sum()


def objective(X: Any, time: Any, event: Any, *, ties: str = "breslow", l2: float = 0.0
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Build the masked Cox objective ``objective(beta, mask) -> scalar`` for the engine.

    Args:
        X: covariates ``(n, p)``; time: ``(n,)`` non-negative; event: ``(n,)`` 0/1 (see :func:`prepare`).
        ties: ``"breslow"`` or ``"efron"`` (weighted Efron, see the module docstring).
        l2: ridge penalty, adds ``l2 / 2 * ||beta||^2`` to the **summed** negative partial log-likelihood.

    Returns:
        ``objective(beta, mask)``: ``beta`` shape ``(p,)``, ``mask`` shape ``(n,)`` in the input row order
        (1 keeps a patient, 0 deletes it, values in between are case weights). O(n p) per call, sorted
        once, risk sets by reverse cumulative sums; vmap-compatible over ``mask``.

    Raises:
        InputError: bad data (see :func:`prepare`), unknown ``ties``, or ``l2`` negative, NaN or infinite.
    """
    if ties not in TIES:
        raise InputError(f"ties must be one of {TIES}, got {ties!r}.")
    l2 = check_l2(l2)
    data = prepare(X, time, event)

    def cox_objective(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_mask(mask, data.n)
        value = _negative_log_partial_likelihood(data, beta, mask[data.order], ties)
        return value + 0.5 * l2 * (beta * beta).sum() if l2 else value

    cox_objective.data = data  # type: ignore[attr-defined]  # lets callers reuse the sorted data
    return cox_objective


def fit(X: Any, time: Any, event: Any, *, ties: str = "breslow", l2: float = 0.0, mask: torch.Tensor | None = None,
        init: torch.Tensor | None = None, gtol: float = 1e-9, max_iter: int = 50) -> torch.Tensor:
    """Maximum partial-likelihood coefficients by damped Newton (:func:`vif.fit.newton`).

    Args:
        X, time, event, ties, l2: as in :func:`objective`.
        mask: ``(n,)`` case weights / deletions; ``None`` means all ones.
        init: starting ``beta`` ``(p,)`` (e.g. the full-data fit for a warm-started LOO refit); default zeros.
        gtol: stop when ``max |grad|`` of the summed objective is below this.
        max_iter: Newton iterations allowed.

    Returns:
        ``beta`` of shape ``(p,)``, the dtype of ``X`` (float64 unless ``X`` is a float tensor).

    Raises:
        vif.errors.ConvergenceError: ``max |grad| > gtol`` after ``max_iter`` iterations, or a coefficient
            that runs off while the gradient vanishes (message "no finite minimiser: ...": monotone likelihood,
            e.g. a covariate level with no events, or separation; use ``l2 > 0`` or drop the covariate).
    """
    return CoxRegression(X, time, event, ties=ties, l2=l2, gtol=gtol, max_iter=max_iter).fit(mask, init)


def relative_hazard(X_test: Any, dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor], torch.Tensor]:
    """Target ``beta -> exp(X_test beta)``, the relative hazards of the test patients, shape ``(n_test,)``."""
    x = _as_tensor(X_test, "X_test", dtype)
    return lambda beta: torch.exp(x.to(beta.device) @ beta)


def log_partial_likelihood(X_test: Any, time: Any, event: Any, *, ties: str = "breslow"
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Target ``beta -> loglik(beta)``: the (positive) partial log-likelihood of held-out patients, a scalar."""
    test_loss = objective(X_test, time, event, ties=ties)
    data = test_loss.data  # type: ignore[attr-defined]
    full = torch.ones(data.n, dtype=data.x.dtype, device=data.x.device)
    return lambda beta: -test_loss(beta, full)


class CoxRegression:
    """The task contract (:class:`vif.task.Task`) for the masked Cox objective: patients are the units.

    Provides the closed-form VIF fast path (:meth:`mask_gradient_differences`) and declares the objective
    not linear in the mask (``mask_linear = False``: the engine skips that check).

    Args:
        X, time, event, ties, l2: as in :func:`objective`.
        gtol, max_iter: Newton tolerance on ``max|grad|`` of the summed objective, and iteration cap.
    """

    mask_linear = False

    def __init__(self, X: Any, time: Any, event: Any, *, ties: str = "breslow", l2: float = 0.0,
                 gtol: float = 1e-9, max_iter: int = 50) -> None:
        self._objective = objective(X, time, event, ties=ties, l2=l2)
        self.data: CoxData = self._objective.data  # type: ignore[attr-defined]
        self.ties, self.l2, self.gtol, self.max_iter = ties, l2, gtol, max_iter
        data = self.data
        self._gradients = CoxGradients(data.x, data.event, data.group, data.order, ties)

    @property
    def n_units(self) -> int:
        """Patients."""
        return self.data.n

    def objective(self, beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Summed negative partial log-likelihood (plus ridge) with case weights ``mask`` (input row order)."""
        return self._objective(beta, mask)

    def mask_gradient_differences(self, beta: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Closed-form ``grad L(beta, masks[r]) - grad L(beta, 1)``, shape ``(k, p)``, for masks ``(k, n)``.

        The VIF fast path of the task contract (:mod:`vif.tasks.cox_gradients`): exact for any mask values,
        Breslow and weighted Efron; the ridge term cancels. Tested against autodiff of :meth:`objective`.
        """
        return self._gradients.differences(beta, masks)

    def mask_change_gradient_differences(self, beta: torch.Tensor, rows: torch.Tensor, units: torch.Tensor,
                                         values: torch.Tensor, k: int) -> torch.Tensor:
        """:meth:`mask_gradient_differences` for ``k`` masks equal to 1 except ``mask[rows[j], units[j]] = values[j]``.

        The sparse form the engine passes for removals (no dense ``(k, n)`` mask is built); ``(k, p)``.
        """
        return self._gradients.changes(beta, rows, units, values, k)

    def fit(self, mask: torch.Tensor | None = None, init: torch.Tensor | None = None) -> torch.Tensor:
        """Damped Newton from ``init`` (default zeros); raises ``ConvergenceError`` above ``gtol``."""
        like = self.data.x
        mask = torch.ones(self.n_units, dtype=like.dtype, device=like.device) if mask is None else mask.to(like.dtype)
        start = like.new_zeros(like.shape[1]) if init is None else init.detach().to(like.dtype)
        return newton(self._objective, start, mask, gtol=self.gtol, max_iter=self.max_iter)
