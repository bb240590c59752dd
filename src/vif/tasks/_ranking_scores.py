"""The listwise scorer's data check, scores and parameter layout (private; import them from :mod:`vif.tasks.ranking`).

Shared by :mod:`vif.tasks.ranking` and :mod:`vif.tasks.ranking_hessian`, so that neither imports the other's
helpers back. Notation as in :mod:`vif.tasks.ranking`: parameters ``{"weight": W (n_items, d), "bias": b (n_items,)}``,
scores ``s(x) = W x + b``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError

Params = dict[str, torch.Tensor]


def as_data(X: Any, relevance: Any) -> tuple[torch.Tensor, torch.Tensor]:
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


def scores(params: Params, X: torch.Tensor) -> torch.Tensor:
    """Item scores ``X W^T + b`` of shape ``(n_queries, n_items)``."""
    return torch.addmm(params["bias"], X, params["weight"].T)


def item_parameters(n_items: int, d: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat parameter indices ``(n_items, d+1)`` of item ``j``'s weights ``W[j, :]`` and bias ``b[j]``.

    Item ``j`` alone uses them: once it is removed they appear only in the weight decay. Pass the result as
    ``unit_params`` to :func:`vif.influence` to hold them out of the removal step.
    """
    items = torch.arange(n_items, device=device)
    columns = torch.arange(d, device=device)
    return torch.cat([items[:, None] * d + columns[None, :], (n_items * d + items)[:, None]], dim=1)
