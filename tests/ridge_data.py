"""Shared test data: a small ridge regression whose refits have a closed form (the harness tests' truth)."""

from __future__ import annotations

import torch


def ridge(n: int, d: int, seed: int):
    """``(X, Y, objective, exact_fit)`` on seeded standard-normal ``X (n, d)`` and ``Y (n,)``.

    ``objective(beta, mask) = 1/2 sum_i m_i (y_i - x_i . beta)^2 + 1/2 ||beta||^2``; ``exact_fit(mask, init)``
    solves its normal equations (``init`` is ignored). Both read ``X`` and ``Y`` when called, so a test may edit
    rows in place.
    """
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    Y = torch.randn(n, generator=generator, dtype=torch.float64)

    def objective(beta, mask):
        return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()

    def exact_fit(mask, init=None):
        return torch.linalg.solve(X.T @ (mask[:, None] * X) + torch.eye(d, dtype=X.dtype), X.T @ (mask * Y))

    return X, Y, objective, exact_fit
