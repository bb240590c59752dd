"""Pairwise logistic ranking (RankNet-style): a small loss in which every term couples two units.

Each unit ``i`` has features ``x_i`` and a relevance grade ``y_i``; the score is ``s_i = x_i . w``.
Every ordered pair with ``y_i > y_j`` contributes ``log(1 + exp(-(s_i - s_j)))``. Removing unit ``i``
removes *all* pairs that contain it, as winner or as loser::

    L(w, m) = sum_{(i, j): y_i > y_j} m_i m_j log(1 + exp(-(s_i - s_j))) + (l2 / 2) ||w||^2

A per-example library has to assign each pair to one unit; :func:`winner_losses` assigns it to its
winner ``i`` (``l_i = sum_{j: y_j < y_i} ...``), which is what a naive decomposition computes. Removing
``i`` then also deletes the pairs that ``i`` loses, which that decomposition never sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..fit import newton
from ..params import check_mask
from ._penalty import check_l2

__all__ = ["PairwiseRanking", "objective", "fit", "pair_losses", "winner_losses"]


def pair_losses(weight: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` matrix: entry ``(i, j)`` is ``log(1 + exp(-(s_i - s_j)))`` if ``y_i > y_j``, else 0."""
    scores = X @ weight
    ordered = (y[:, None] > y[None, :]).to(X.dtype)
    return ordered * F.softplus(-(scores[:, None] - scores[None, :]))


def winner_losses(weight: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example decomposition ``(n,)``: each pair's loss charged to its winner (the naive split)."""
    return pair_losses(weight, X, y).sum(dim=1)


def objective(X: torch.Tensor, y: torch.Tensor, *, l2: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``objective(weight, mask)``: masked sum of pair losses plus ``(l2/2)||w||^2``; units are rows of ``X``."""
    n, l2 = X.shape[0], check_l2(l2)

    def value(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_mask(mask, n)
        pair_mask = mask[:, None] * mask[None, :]
        return (pair_mask * pair_losses(weight, X, y)).sum() + 0.5 * l2 * weight.square().sum()

    return value


def fit(X: torch.Tensor, y: torch.Tensor, *, l2: float = 1.0, mask: torch.Tensor | None = None,
        init: torch.Tensor | None = None, gtol: float = 1e-10) -> torch.Tensor:
    """Minimise :func:`objective` by Newton's method; returns the weight ``(d,)``."""
    init = X.new_zeros(X.shape[1]) if init is None else init
    mask = X.new_ones(X.shape[0]) if mask is None else mask
    return newton(objective(X, y, l2=l2), init, mask, gtol=gtol)


@dataclass
class PairwiseRanking:
    """The task contract (:class:`vif.task.Task`) for :func:`objective` / :func:`fit`: one unit per row of ``X``."""

    X: torch.Tensor
    y: torch.Tensor
    l2: float = 1.0
    gtol: float = 1e-10

    def __post_init__(self) -> None:
        self._objective = objective(self.X, self.y, l2=self.l2)

    @property
    def n_units(self) -> int:
        """Items (rows of ``X``)."""
        return int(self.X.shape[0])

    def objective(self, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked sum of pair losses plus the penalty."""
        return self._objective(weight, mask)

    def fit(self, mask: torch.Tensor | None = None, init: torch.Tensor | None = None) -> torch.Tensor:
        """Newton from ``init`` (default zeros) to ``max|grad| <= gtol``."""
        return fit(self.X, self.y, l2=self.l2, mask=mask, init=init, gtol=self.gtol)
