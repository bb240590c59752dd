"""Listwise learning-to-rank with a linear scorer; the removable unit is an **item** (a label).

Queries ``q = 1..N`` have features ``x_q`` (``(d,)``) and a 0/1 relevance row ``r_q`` over ``n_items``
items. The scorer is linear with a bias, ``s(x) = W x + b`` with ``W`` of shape ``(n_items, d)`` and
``b`` of shape ``(n_items,)``; parameters are the dict ``{"weight": W, "bias": b}`` (flattened in that
order, so the column of ``W[j, k]`` is ``j * d + k`` and that of ``b[j]`` is ``n_items * d + j``).

The item mask ``m`` (``(n_items,)``) weights item ``j`` in every list and in every relevant set:
``m_j = 0`` removes item ``j`` everywhere (its logit is ``-inf`` in every softmax and it is no longer
relevant to any query), values in ``(0, 1)`` down-weight it, so the infinitesimal influence is defined.
The list normaliser is ``Z_q(m) = sum_j m_j exp(s_qj)``; relevance weights are ``w_qj = r_qj m_j`` and
``|A_q| = sum_j w_qj``. The three listwise losses of one query are

* ``softmax`` (the paper's): ``-(1/|A_q|) sum_j w_qj (s_qj - log Z_q)``;
* ``listnet`` (Cao et al. 2007, top-one probabilities): ``-sum_j P_qj (s_qj - log Z_q)`` with target
  ``P_qj = m_j exp(r_qj) / sum_k m_k exp(r_qk)``;
* ``listmle`` (Xia et al. 2008, top-``|A|`` Plackett-Luce likelihood): the relevant items, in increasing
  item index, are placed before all others; ``-(1/|A_q|) sum_j w_qj (s_qj - log Z_qj)`` where ``Z_qj``
  sums ``m_k exp(s_qk)`` over the items not yet placed (relevant ``k >= j`` and every irrelevant ``k``).

A query whose relevant set is empty (``|A_q| = 0``, e.g. its only relevant item was removed) contributes
exactly 0 with every loss; :func:`emptied_queries` lists them. The training objective is the **mean**
over the ``N`` training queries plus weight decay on all parameters (bias included):
``L(theta, m) = (1/N) sum_q loss_q(theta, m) + (l2/2) ||theta||^2``, so its Hessian is that of the mean.

Sign convention: influence of item ``i`` on ``f`` = predicted ``f(theta_-i) - f(theta_hat)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..fit import lbfgs, preconditioned_lbfgs
from ..heldout import restrict_solution
from ..params import check_mask, flatten
from ..solvers import cholesky_solver
from ._penalty import check_l2
from ._ranking_scores import Params, as_data, item_parameters, scores
from .ranking_hessian import closed_form_hessian

__all__ = [
    "LOSSES",
    "ListwiseRanking",
    "as_data",
    "emptied_queries",
    "fit",
    "init_params",
    "item_parameters",
    "objective",
    "query_losses",
    "scores",
    "target",
]

LOSSES = ("softmax", "listnet", "listmle")


def init_params(n_features: int, n_items: int, like: torch.Tensor) -> Params:
    """Zero parameters ``{"weight": (n_items, n_features), "bias": (n_items,)}`` with ``like``'s dtype/device."""
    return {"weight": like.new_zeros((n_items, n_features)), "bias": like.new_zeros(n_items)}


def query_losses(S: torch.Tensor, relevance: torch.Tensor, mask: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-query listwise losses with item mask ``mask``; 0 for a query with no (unmasked) relevant item.

    Args:
        S: scores ``(n_queries, n_items)``.
        relevance: 0/1 float ``(n_queries, n_items)``.
        mask: item weights ``(n_items,)`` in [0, 1]; 0 removes an item from every list and relevant set.
        loss: one of :data:`LOSSES`.

    Returns:
        ``(n_queries,)`` losses. vmap-compatible over ``mask`` (no branching on its values); the mask enters
        through products with ``(n_queries, n_items)`` matrices, so most work does not depend on it.
    """
    # Shift by each query's largest score (masked items included): the shift cancels exactly, so detaching
    # it is exact; a kept item would underflow only if a masked one outscored all kept ones by > 700.
    shift = S.detach().amax(dim=1)
    E = torch.exp(S - shift[:, None])
    log_Z = torch.log(E @ mask) + shift
    size = relevance @ mask
    has_relevant = size > 0
    safe_size = torch.where(has_relevant, size, torch.ones_like(size))
    if loss == "softmax":
        per_query = log_Z - ((relevance * S) @ mask) / safe_size
    elif loss == "listnet":  # target P_qj proportional to m_j exp(r_qj); sum_j P_qj = 1
        weight = torch.exp(relevance)
        per_query = log_Z - ((weight * S) @ mask) / (weight @ mask)
    elif loss == "listmle":
        w = relevance * mask
        rel_E = w * E
        # items not yet placed when relevant item j is placed: relevant k >= j, and every irrelevant k
        later_relevant = torch.flip(torch.cumsum(torch.flip(rel_E, dims=[1]), dim=1), dims=[1])
        rest = ((1 - relevance) * E) @ mask
        remaining = later_relevant + rest[:, None]
        log_Zj = torch.log(torch.where(w > 0, remaining, torch.ones_like(remaining))) + shift[:, None]
        per_query = -(w * (S - log_Zj)).sum(dim=1) / safe_size
    else:
        raise InputError(f"loss={loss!r} is not one of {LOSSES}.")
    return torch.where(has_relevant, per_query, torch.zeros_like(per_query))


def objective(
    X: Any, relevance: Any, *, loss: str = "softmax", l2: float = 5e-4
) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """Training objective ``L(params, mask)`` over items (see the module docstring for the formula).

    Args:
        X: query features ``(n_queries, n_features)``.
        relevance: 0/1 ``(n_queries, n_items)``, dense or sparse.
        loss: ``"softmax"`` (the paper's), ``"listnet"`` or ``"listmle"``.
        l2: weight decay ``l2 / 2 * ||theta||^2`` on all parameters; part of the objective the influence uses.

    Returns:
        ``objective(params, mask) -> scalar``: mean per-query loss plus weight decay; ``mask`` is ``(n_items,)``.
    """
    if loss not in LOSSES:
        raise InputError(f"loss={loss!r} is not one of {LOSSES}.")
    l2 = check_l2(l2)  # weight decay (the paper used 5e-4)
    X_t, R = as_data(X, relevance)
    n_items = R.shape[1]

    def ranking_objective(params: Params, mask: torch.Tensor) -> torch.Tensor:
        check_mask(mask, n_items)
        data = query_losses(scores(params, X_t), R, mask, loss).mean()
        penalty = (params["weight"] ** 2).sum() + (params["bias"] ** 2).sum()
        return data + 0.5 * l2 * penalty

    return ranking_objective


def fit(
    X: Any,
    relevance: Any,
    *,
    loss: str = "softmax",
    l2: float = 5e-4,
    mask: torch.Tensor | None = None,
    init: Params | None = None,
    gtol: float = 1e-10,
    max_rounds: int = 20,
) -> Params:
    """Minimise :func:`objective` by Newton rounds that re-factorise the Hessian rarely.

    Each round takes at most 10 L-BFGS steps preconditioned with the exact Hessian at the round's start
    (closed form, :func:`vif.tasks.ranking_hessian.closed_form_hessian`): :func:`vif.fit.preconditioned_lbfgs`
    with ``hessian=`` and ``refresh=10``. The float64 floor of ``max|grad|`` on this objective is about ``1e-12``.

    Args:
        X, relevance, loss, l2: as in :func:`objective`.
        mask: item mask ``(n_items,)``; ``None`` keeps all items.
        init: starting parameters (warm start); ``None``: zeros, improved by L-BFGS to ``max|grad| <= 1e-3``.
        gtol: final tolerance on ``max|grad|`` of the mean objective.
        max_rounds: cap on Hessian factorisations.

    Returns:
        ``{"weight": (n_items, n_features), "bias": (n_items,)}``.

    Raises:
        ConvergenceError: the tolerance was not reached.
    """
    X_t, R = as_data(X, relevance)
    obj = objective(X_t, R, loss=loss, l2=l2)
    mask = X_t.new_ones(R.shape[1]) if mask is None else check_mask(mask, R.shape[1])
    if init is None:  # a cheap first-order start, so that the first Hessian is taken near the optimum
        init = lbfgs(obj, init_params(X_t.shape[1], R.shape[1], X_t), mask, gtol=1e-3, max_iter=5000)

    def hessian(params: Params) -> torch.Tensor:
        return closed_form_hessian(X_t, R, params, loss=loss, l2=l2, mask=mask)

    return preconditioned_lbfgs(obj, init, mask, hessian=hessian, refresh=10, gtol=gtol, max_iter=10 * max_rounds)


class ListwiseRanking:
    """The task contract (:class:`vif.task.Task`) for the listwise objective: items are the units.

    ``fit(mask, None)`` is a cold fit (:func:`fit`). ``fit(mask, init)`` is an exact leave-items-out refit
    warm-started at ``init``: a removed item appears in no data term, so its parameters' optimum is exactly 0
    (weight decay); the others are found by L-BFGS preconditioned with the Hessian at ``init`` restricted to
    them (:func:`vif.heldout.restrict_solution`), to ``max|grad| <= gtol``. The Hessian at ``init`` is
    factorised once and reused while ``init`` stays the same; :meth:`use_hessian` hands in one already built.

    Args:
        X, relevance, loss, l2: as in :func:`objective`.
        gtol: final tolerance on ``max|grad|`` of the mean objective.
    """

    def __init__(self, X: Any, relevance: Any, *, loss: str = "softmax", l2: float = 5e-4, gtol: float = 1e-10):
        self.X, self.R = as_data(X, relevance)
        self.loss, self.l2, self.gtol = loss, l2, gtol
        self._objective = objective(self.X, self.R, loss=loss, l2=l2)
        self._warm: tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None = None

    @property
    def n_units(self) -> int:
        """Items."""
        return int(self.R.shape[1])

    def objective(self, params: Params, mask: torch.Tensor) -> torch.Tensor:
        """Mean per-query loss plus weight decay (see :func:`objective`)."""
        return self._objective(params, mask)

    def hessian(self, params: Params, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The closed-form Hessian of the objective at ``params`` (and ``mask``)."""
        return closed_form_hessian(self.X, self.R, params, loss=self.loss, l2=self.l2, mask=mask)

    def use_hessian(self, params: Params, hessian: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Reuse the full-data Hessian at ``params`` (a matrix or a solver for it) for warm refits from ``params``."""
        theta, _ = flatten(params)
        self._warm = (theta.clone(), hessian if callable(hessian) else cholesky_solver(hessian, max_condition=math.inf))

    def fit(self, mask: torch.Tensor | None = None, init: Params | None = None) -> Params:
        """Cold fit (``init=None``) or exact warm refit from ``init`` for a 0/1 ``mask`` ``(n_items,)``."""
        if init is None:
            return fit(self.X, self.R, loss=self.loss, l2=self.l2, mask=mask, gtol=self.gtol)
        mask = self.X.new_ones(self.n_units) if mask is None else check_mask(mask, self.n_units)
        theta, unflatten = flatten(init)
        if self._warm is None or not torch.equal(self._warm[0], theta):
            self.use_hessian(init, self.hessian(init))
        solve_full = self._warm[1]
        removed = item_parameters(self.n_units, self.X.shape[1], theta.device)[mask == 0].reshape(-1)
        theta = theta.clone()
        theta[removed] = 0.0
        unit = theta.new_zeros(len(theta), len(removed))
        unit[removed, torch.arange(len(removed), device=theta.device)] = 1.0
        columns = solve_full(unit)  # H^-1 at the removed coordinates, once per refit

        def solve(g: torch.Tensor) -> torch.Tensor:
            g = g.clone()
            g[removed] = 0.0
            return restrict_solution(solve_full(g), columns, removed)

        return preconditioned_lbfgs(self._objective, unflatten(theta), mask, preconditioner=solve, gtol=self.gtol,
                                    max_iter=200)


def target(
    X: Any, relevance: Any, *, loss: str = "softmax", masked: bool = True
) -> Callable[..., torch.Tensor]:
    """Test-query losses as an influence target.

    Args:
        X, relevance: test queries ``(n_test, d)`` and ``(n_test, n_items)``.
        loss: the listwise loss.
        masked: ``True`` returns the mask-aware ``target(params, mask)``: the removed item is masked out of
            every test list and relevant set (a query left with no relevant item gets 0; exclude it with
            :func:`emptied_queries`). ``False`` returns ``target(params)`` on the full lists.

    Returns:
        A callable returning ``(n_test,)`` losses.
    """
    X_t, R = as_data(X, relevance)
    ones = X_t.new_ones(R.shape[1])
    if masked:

        def masked_test_loss(params: Params, mask: torch.Tensor) -> torch.Tensor:
            return query_losses(scores(params, X_t), R, mask, loss)

        return masked_test_loss

    def test_loss(params: Params) -> torch.Tensor:
        return query_losses(scores(params, X_t), R, ones, loss)

    return test_loss


def emptied_queries(relevance: Any, units: Any = None) -> np.ndarray:
    """Which queries lose their whole relevant set when one item is removed.

    Args:
        relevance: 0/1 ``(n_queries, n_items)``.
        units: removed items (default: all), ``(n_units,)``.

    Returns:
        bool ``(n_units, n_queries)``: True where removing the unit leaves the query with no relevant item
        (its target is undefined; pass ``~emptied`` as ``valid`` to :func:`vif.metrics.correlations`).
    """
    R = as_data(np.zeros((np.shape(relevance)[0], 1)), relevance)[1].numpy() > 0
    units = np.arange(R.shape[1]) if units is None else np.asarray(units)
    single = R.sum(axis=1) == 1
    return (R[:, units] & single[:, None]).T
