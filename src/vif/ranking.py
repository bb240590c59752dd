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
* ``listmle`` (Xia et al. 2008, top-|A| Plackett-Luce likelihood): the relevant items, in increasing
  item index, are placed before all others; ``-(1/|A_q|) sum_j w_qj (s_qj - log Z_qj)`` where ``Z_qj``
  sums ``m_k exp(s_qk)`` over the items not yet placed (relevant ``k >= j`` and every irrelevant ``k``).

A query whose relevant set is empty (``|A_q| = 0``, e.g. its only relevant item was removed) contributes
exactly 0 with every loss; :func:`emptied_queries` lists them. The training objective is the **mean**
over the ``N`` training queries plus weight decay on all parameters (bias included):
``L(theta, m) = (1/N) sum_q loss_q(theta, m) + (l2/2) ||theta||^2``, so its Hessian is that of the mean.

Sign convention: influence of item ``i`` on ``f`` = predicted ``f(theta_-i) - f(theta_hat)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import ConvergenceError, InputError
from .fit import lbfgs
from .hessian import cholesky_solver, restrict_solution
from .params import check_mask, flatten

__all__ = [
    "LOSSES",
    "block_jacobi",
    "hessian",
    "emptied_queries",
    "fit",
    "init_params",
    "item_parameters",
    "loo_fit",
    "ndcg",
    "objective",
    "query_losses",
    "scores",
    "target",
]

LOSSES = ("softmax", "listnet", "listmle")
Params = dict[str, torch.Tensor]


def _as_tensor(X: Any, relevance: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate features ``(N, d)`` and a 0/1 relevance matrix ``(N, n_items)`` (dense, scipy or torch sparse)."""
    if hasattr(relevance, "toarray"):  # scipy.sparse
        relevance = relevance.toarray()
    if isinstance(relevance, torch.Tensor) and relevance.layout != torch.strided:
        relevance = relevance.to_dense()
    X_t = torch.as_tensor(X)
    if not X_t.is_floating_point():
        X_t = X_t.to(torch.float64)
    R = torch.as_tensor(relevance).to(X_t.dtype)
    if X_t.ndim != 2 or R.ndim != 2 or X_t.shape[0] != R.shape[0]:
        raise InputError(
            f"X must be (n_queries, n_features) and relevance (n_queries, n_items) with the same number of "
            f"rows; got X {tuple(X_t.shape)} and relevance {tuple(R.shape)}."
        )
    if not bool(torch.isfinite(X_t).all()):
        raise InputError("X has NaN or infinite entries; impute or drop those queries before fitting.")
    if not bool(((R == 0) | (R == 1)).all()):
        raise InputError("relevance must hold only 0 and 1; binarise graded labels first (e.g. label > 0).")
    return X_t, R


def init_params(n_features: int, n_items: int, like: torch.Tensor) -> Params:
    """Zero parameters ``{"weight": (n_items, n_features), "bias": (n_items,)}`` with ``like``'s dtype/device."""
    return {"weight": like.new_zeros((n_items, n_features)), "bias": like.new_zeros(n_items)}


def scores(params: Params, X: torch.Tensor) -> torch.Tensor:
    """Item scores ``X W^T + b`` of shape ``(n_queries, n_items)``."""
    return torch.addmm(params["bias"], X, params["weight"].T)


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
    if l2 < 0:
        raise InputError(f"l2={l2} is negative; weight decay must be >= 0 (the paper used 5e-4).")
    X_t, R = _as_tensor(X, relevance)
    n_items = R.shape[1]

    def ranking_objective(params: Params, mask: torch.Tensor) -> torch.Tensor:
        check_mask(mask, n_items)
        data = query_losses(scores(params, X_t), R, mask, loss).mean()
        penalty = (params["weight"] ** 2).sum() + (params["bias"] ** 2).sum()
        return data + 0.5 * l2 * penalty

    return ranking_objective


def _descend(
    function: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    solve: Callable[[torch.Tensor], torch.Tensor],
    *,
    gtol: float,
    max_iter: int = 200,
    history: int = 20,
) -> tuple[torch.Tensor, bool]:
    """Minimise ``function`` by L-BFGS whose initial inverse Hessian is ``solve`` (an SPD preconditioner).

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
        norm = float(gradient.abs().max())
        if norm <= gtol:
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


def _not_converged(gtol: float, steps: int) -> ConvergenceError:
    return ConvergenceError(
        f"ranking fit did not reach max|grad| <= {gtol:.1e} in {steps} preconditioned L-BFGS steps; "
        "loosen gtol (the float64 floor of this objective is about 1e-12) or check the data for NaN."
    )


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

    Each round takes at most 10 L-BFGS steps preconditioned with the exact (closed-form, :func:`hessian`)
    Hessian at the round's start.

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
    X_t, R = _as_tensor(X, relevance)
    obj = objective(X_t, R, loss=loss, l2=l2)
    mask = torch.ones(R.shape[1], dtype=X_t.dtype) if mask is None else check_mask(mask, R.shape[1])
    if init is None:  # a cheap first-order start, so that the first Hessian is taken near the optimum
        init = lbfgs(obj, init_params(X_t.shape[1], R.shape[1], X_t), mask, gtol=1e-3, max_iter=5000)
    theta, unflatten = flatten(init)

    def function(vector: torch.Tensor) -> torch.Tensor:
        return obj(unflatten(vector), mask)

    for _ in range(max_rounds):
        solve = cholesky_solver(hessian(X_t, R, unflatten(theta), loss=loss, l2=l2, mask=mask))
        theta, converged = _descend(function, theta, solve, gtol=gtol, max_iter=10)
        if converged:
            return unflatten(theta)
    raise _not_converged(gtol, 10 * max_rounds)


def loo_fit(
    X: Any, relevance: Any, params: Params, *, loss: str = "softmax", l2: float = 5e-4, gtol: float = 1e-10,
    full_hessian: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, Params | None], Params]:
    """Exact leave-items-out refits warm-started at the full-data fit ``params``, for :func:`vif.leave_one_out`.

    A removed item appears in no data term, so its parameters' optimum is exactly 0 (weight decay); the
    others are found by L-BFGS preconditioned with the full-data Hessian restricted to them
    (:func:`vif.hessian.restrict_solution`), to ``max|grad| <= gtol``. Cold starts (``init=None``) fall back
    to :func:`fit`. ``full_hessian``: :func:`hessian` at ``params`` or a solver for it
    (:func:`vif.hessian.cholesky_solver`), if already computed.

    Returns:
        ``fit(mask, init) -> params`` for a 0/1 ``mask`` of shape ``(n_items,)``.
    """
    X_t, R = _as_tensor(X, relevance)
    obj = objective(X_t, R, loss=loss, l2=l2)
    n_items, d = R.shape[1], X_t.shape[1]
    if full_hessian is None:
        full_hessian = hessian(X_t, R, params, loss=loss, l2=l2)
    solve_full = full_hessian if callable(full_hessian) else cholesky_solver(full_hessian)
    index = item_parameters(n_items, d)

    def refit(mask: torch.Tensor, init: Params | None) -> Params:
        if init is None:
            return fit(X_t, R, loss=loss, l2=l2, mask=mask, gtol=gtol)
        removed = index[mask == 0].reshape(-1)
        theta, unflatten = flatten(init)
        theta = theta.clone()
        theta[removed] = 0.0
        unit = torch.zeros(len(theta), len(removed), dtype=theta.dtype)
        unit[removed, torch.arange(len(removed))] = 1.0
        columns = solve_full(unit)  # H^-1 at the removed coordinates, once per refit

        def solve(g: torch.Tensor) -> torch.Tensor:
            g = g.clone()
            g[removed] = 0.0
            return restrict_solution(solve_full(g), columns, removed)

        theta, converged = _descend(lambda t: obj(unflatten(t), mask), theta, solve, gtol=gtol)
        if not converged:
            raise _not_converged(gtol, 200)
        return unflatten(theta)

    return refit


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
    X_t, R = _as_tensor(X, relevance)
    ones = torch.ones(R.shape[1], dtype=X_t.dtype)
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
    R = _as_tensor(np.zeros((np.shape(relevance)[0], 1)), relevance)[1].numpy() > 0
    units = np.arange(R.shape[1]) if units is None else np.asarray(units)
    single = R.sum(axis=1) == 1
    return (R[:, units] & single[:, None]).T


def _score_hessian(
    S: torch.Tensor, R: torch.Tensor, mask: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Each query's loss Hessian in its scores, as ``diag(u_q) - g_q g_q^T - M_q``.

    softmax / listnet: ``u = p``, ``g = p`` (the masked softmax; 0 for a query without relevant items),
    ``M = 0``. listmle: the loss is ``sum_k c_k [log Z_k - s_k]`` over the relevant items ``k`` (``c_k =
    w_qk / |A_q|``, ``Z_k`` over the items not yet placed), so the Hessian is ``sum_k c_k (diag(p_k) -
    p_k p_k^T)`` with ``p_k = (e_irr + e_rel [j >= k]) / Z_k``, ``e = m exp(s)`` split into irrelevant and
    relevant items. With ``beta_k = c_k / Z_k^2``, ``a = sum_k beta_k``, ``B_j = sum_{k <= j} beta_k`` and
    ``t = e_rel B``: ``sum_k c_k p_k p_k^T = g g^T + M`` with ``g = (a e_irr + t) / sqrt(a)`` and ``M`` supported
    on the relevant items, ``M_ij = e_i e_j B_min(i,j) - t_i t_j / a``: one dense term per query, as for
    the softmax, instead of one per relevant item.

    Returns:
        ``(u, g, pairs)``: ``(n_queries, n_items)`` each, and for listmle ``pairs = (query, i, j, M_ij)``
        over every ordered pair of kept relevant items of each query (else None).
    """
    E = mask * torch.exp(S - S.amax(dim=1, keepdim=True))
    w = R * mask
    size = w.sum(dim=1, keepdim=True)
    if loss in ("softmax", "listnet"):
        P = (size > 0) * E / E.sum(dim=1, keepdim=True)
        return P, P, None
    c = w / torch.where(size > 0, size, torch.ones_like(size))
    rel_E, irr_E = R * E, (1 - R) * E
    later_relevant = torch.flip(torch.cumsum(torch.flip(rel_E, dims=[1]), dim=1), dims=[1])
    Z = later_relevant + irr_E.sum(dim=1, keepdim=True)  # Z_k at the relevant items k
    safe_Z = torch.where(c > 0, Z, torch.ones_like(Z))
    gamma, beta = c / safe_Z, c / safe_Z**2
    C, B = torch.cumsum(gamma, dim=1), torch.cumsum(beta, dim=1)
    a = beta.sum(dim=1, keepdim=True)
    u = gamma.sum(dim=1, keepdim=True) * irr_E + rel_E * C  # sum_k c_k p_k
    t = rel_E * B
    safe_a = torch.where(a > 0, a, torch.ones_like(a))
    g = (a * irr_E + t) / torch.sqrt(safe_a)
    # pairs of kept relevant items, each query's items in increasing index (padded to the longest set)
    kept = (w > 0).to(torch.int64)
    width = int(kept.sum(dim=1).max()) if len(kept) else 0
    # kept relevant items first, in increasing index, then the rest
    items = torch.argsort(kept * S.shape[1] - torch.arange(S.shape[1]), dim=1, descending=True)[:, :width]
    valid = torch.gather(kept, 1, items) > 0
    e, t_, b = (torch.gather(v, 1, items) for v in (rel_E, t, B))
    position = torch.arange(width)
    b_min = b[:, torch.minimum(position[:, None], position[None, :])]  # B at the earlier item of each pair
    M = e[:, :, None] * e[:, None, :] * b_min - t_[:, :, None] * t_[:, None, :] / safe_a[:, :, None]
    pair = valid[:, :, None] & valid[:, None, :]
    query, first, second = torch.nonzero(pair, as_tuple=True)
    return u, g, (query, items[query, first], items[query, second], M[query, first, second])


def _query_chunks(n_queries: int, n_items: int, budget: int = 4_000_000) -> list[slice]:
    """Row blocks of about ``budget / n_items`` queries: few blocks, since each one updates all of ``H``."""
    step = max(1, budget // n_items)
    return [slice(start, min(start + step, n_queries)) for start in range(0, n_queries, step)]


def _item_blocks(X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``(n_items, d+1, d+1)`` blocks ``sum_q M_qj x~_q x~_q^T`` with ``x~ = (x, 1)``."""
    Xb = torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)
    return torch.einsum("qj,qa,qb->jab", M, Xb, Xb)


def item_parameters(n_items: int, d: int) -> torch.Tensor:
    """Flat parameter indices ``(n_items, d+1)`` of item ``j``'s weights ``W[j, :]`` and bias ``b[j]``.

    Item ``j`` alone uses them: once it is removed they appear only in the weight decay. Pass the result as
    ``unit_params`` to :func:`vif.influence` to hold them out of the removal step.
    """
    items = torch.arange(n_items)
    return torch.cat([items[:, None] * d + torch.arange(d)[None, :], (n_items * d + items)[:, None]], dim=1)


def hessian(
    X: Any, relevance: Any, params: Params, *, loss: str = "softmax", l2: float = 5e-4,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense Hessian ``(n_params, n_params)`` of :func:`objective` in closed form (flattening order of ``params``).

    With ``x~_q = (x_q, 1)`` and the decomposition ``diag(u_q) - g_q g_q^T - M_q`` of :func:`_score_hessian`,
    ``H = (1/N) sum_q [blockdiag_j(u_qj x~ x~^T) - (g_q (x) x~)(g_q (x) x~)^T - M_q (x) x~ x~^T] + l2 I``: per-item
    blocks, one Gram matrix, and (listmle) a sparse sum over pairs of relevant items; far cheaper than
    autograd for ``n_items * (d + 1)`` parameters.
    """
    X_t, R = _as_tensor(X, relevance)
    (n, d), n_items = X_t.shape, R.shape[1]
    mask = torch.ones(n_items, dtype=X_t.dtype) if mask is None else check_mask(mask, n_items)
    n_params = n_items * (d + 1)
    H = X_t.new_zeros(n_params, n_params)
    moments = X_t.new_zeros(n, n_items)
    Xb = torch.cat([X_t, X_t.new_ones(n, 1)], dim=1)
    outer = (Xb[:, :, None] * Xb[:, None, :]).reshape(n, (d + 1) ** 2)
    pair_blocks = X_t.new_zeros(n_items * n_items, (d + 1) ** 2) if loss == "listmle" else None
    with torch.no_grad():
        S = scores(params, X_t)
        for rows in _query_chunks(n, n_items):
            moments[rows], g, pairs = _score_hessian(S[rows], R[rows], mask, loss)
            G = torch.cat([(g[:, :, None] * X_t[rows][:, None, :]).reshape(len(g), n_items * d), g], dim=1)
            H -= G.T @ G
            if pairs is not None:
                query, first, second, value = pairs
                pair_blocks.index_add_(0, first * n_items + second, value[:, None] * outer[rows][query])
        index = item_parameters(n_items, d)
        H[index[:, :, None], index[:, None, :]] += _item_blocks(X_t, moments)
        if pair_blocks is not None:  # item-major order: parameter (i, a) at i * (d + 1) + a
            order = index.reshape(-1)
            blocks = pair_blocks.reshape(n_items, n_items, d + 1, d + 1).permute(0, 2, 1, 3).reshape(n_params, n_params)
            H[order[:, None], order[None, :]] -= blocks
        H /= n
        H.diagonal().add_(l2)
    return 0.5 * (H + H.T)


def block_jacobi(
    X: Any, relevance: Any, params: Params, *, loss: str = "softmax", l2: float = 5e-4
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Block-Jacobi preconditioner ``v -> M^-1 v`` from the exact per-item ``(d+1) x (d+1)`` Hessian blocks.

    Block ``j`` is ``(1/N) sum_q D_qj x~_q x~_q^T + l2 I`` with ``x~_q = (x_q, 1)`` and ``D_qj`` the
    diagonal of query ``q``'s loss Hessian in its scores (see :func:`_score_hessian`).

    Returns:
        A callable acting on ``(n_params,)`` or ``(n_params, k)`` tensors in the flattening order of ``params``.
    """
    X_t, R = _as_tensor(X, relevance)
    (n, d), n_items = X_t.shape, R.shape[1]
    ones = torch.ones(n_items, dtype=X_t.dtype)
    with torch.no_grad():
        S = scores(params, X_t)
        D = X_t.new_zeros(n, n_items)
        for rows in _query_chunks(n, n_items):
            u, g, pairs = _score_hessian(S[rows], R[rows], ones, loss)
            D[rows] = u - g**2
            if pairs is not None:
                query, first, second, value = pairs
                same = first == second
                D[rows] -= torch.zeros_like(u).index_put_((query[same], first[same]), value[same], accumulate=True)
        blocks = _item_blocks(X_t, D) / n + l2 * torch.eye(d + 1, dtype=X_t.dtype)
        factors = torch.linalg.cholesky(blocks)
    index = item_parameters(n_items, d)

    def apply(v: torch.Tensor) -> torch.Tensor:
        V = v.reshape(v.shape[0], -1)
        solved = torch.cholesky_solve(V[index], factors)  # (n_items, d+1, k)
        out = torch.empty_like(V)
        out[index] = solved
        return out.reshape(v.shape)

    return apply


def ndcg(S: torch.Tensor, relevance: torch.Tensor, mask: torch.Tensor | None = None, k: int = 10) -> torch.Tensor:
    """nDCG@k of each query's ranking by ``S`` ``(n_queries, n_items)``; masked items are not ranked.

    Returns:
        ``(n_queries,)``; NaN for a query with no relevant kept item (nDCG undefined there).
    """
    if mask is None:
        mask = torch.ones(S.shape[1], dtype=S.dtype)
    kept = mask > 0
    S_kept = torch.where(kept, S, torch.full_like(S, -torch.inf))
    R = relevance * kept
    k = min(k, int(kept.sum()))
    top = torch.topk(S_kept, k, dim=1).indices
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=S.dtype))
    dcg = (torch.gather(R, 1, top) * discounts).sum(dim=1)
    ideal = (torch.sort(R, dim=1, descending=True).values[:, :k] * discounts).sum(dim=1)
    return torch.where(ideal > 0, dcg / torch.where(ideal > 0, ideal, torch.ones_like(ideal)), torch.nan)
