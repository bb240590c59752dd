"""The listwise ranking objective's Hessian in closed form, and a block-Jacobi preconditioner from it.

For ``n_items * (d + 1)`` parameters autograd would need one Hessian-vector product per parameter; the closed
form below needs a few Gram matrices (see :func:`closed_form_hessian`). Checked against autograd in the tests
(0/1 and fractional masks, every loss). Notation as in :mod:`vif.tasks.ranking`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..params import check_mask
from ._ranking_scores import Params, as_data, item_parameters, scores

__all__ = ["closed_form_hessian", "block_jacobi"]


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
    items = torch.argsort(kept * S.shape[1] - torch.arange(S.shape[1], device=S.device), dim=1, descending=True)[:, :width]
    valid = torch.gather(kept, 1, items) > 0
    e, t_, b = (torch.gather(v, 1, items) for v in (rel_E, t, B))
    position = torch.arange(width, device=S.device)
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


def closed_form_hessian(
    X: Any, relevance: Any, params: Params, *, loss: str = "softmax", l2: float = 5e-4,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense Hessian ``(n_params, n_params)`` of :func:`vif.tasks.ranking.objective` (flattening order of ``params``).

    With ``x~_q = (x_q, 1)`` and the decomposition ``diag(u_q) - g_q g_q^T - M_q`` of :func:`_score_hessian`,
    ``H = (1/N) sum_q [blockdiag_j(u_qj x~ x~^T) - (g_q (x) x~)(g_q (x) x~)^T - M_q (x) x~ x~^T] + l2 I``: per-item
    blocks, one Gram matrix, and (listmle) a sparse sum over pairs of relevant items; far cheaper than
    autograd for ``n_items * (d + 1)`` parameters.
    """
    X_t, R = as_data(X, relevance)
    (n, d), n_items = X_t.shape, R.shape[1]
    mask = X_t.new_ones(n_items) if mask is None else check_mask(mask, n_items)
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
    X_t, R = as_data(X, relevance)
    (n, d), n_items = X_t.shape, R.shape[1]
    ones = X_t.new_ones(n_items)
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
        blocks = _item_blocks(X_t, D) / n + l2 * torch.eye(d + 1, dtype=X_t.dtype, device=X_t.device)
        factors = torch.linalg.cholesky(blocks)
    index = item_parameters(n_items, d)

    def apply(v: torch.Tensor) -> torch.Tensor:
        V = v.reshape(v.shape[0], -1)
        solved = torch.cholesky_solve(V[index], factors)  # (n_items, d+1, k)
        out = torch.empty_like(V)
        out[index] = solved
        return out.reshape(v.shape)

    return apply


