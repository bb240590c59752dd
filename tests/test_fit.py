"""Newton and L-BFGS reach the minimiser, keep the parameter structure, and respect the mask."""

from __future__ import annotations

import torch

import vif
from vif.datasets.tabular import breast_cancer
from vif.tasks import logistic


def test_newton_and_lbfgs_agree_with_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    data = breast_cancer(seed=0)
    X, y = data.X_train, data.y_train
    ones = torch.ones(X.shape[0], dtype=torch.float64)
    init = {"weight": torch.zeros(X.shape[1], dtype=torch.float64), "bias": torch.zeros((), dtype=torch.float64)}
    newton = vif.fit.newton(logistic.objective(X, y), init, ones, gtol=1e-10)
    lbfgs = vif.fit.lbfgs(logistic.objective(X, y), init, ones, gtol=1e-8)
    # scikit-learn minimises C * sum(log-loss) + ||w||^2 / 2, so C = 1 / l2 is the same objective
    reference = LogisticRegression(C=1.0 / logistic.DEFAULT_L2, tol=1e-12, max_iter=10_000).fit(X.numpy(), y.numpy())
    assert set(newton) == {"weight", "bias"}
    assert torch.allclose(newton["weight"], torch.as_tensor(reference.coef_[0]), atol=1e-6)
    assert torch.allclose(newton["bias"], torch.as_tensor(reference.intercept_[0]), atol=1e-6)
    assert torch.allclose(lbfgs["weight"], newton["weight"], atol=1e-7)


def test_a_zero_mask_entry_equals_deleting_the_row():
    data = breast_cancer(seed=0)
    X, y = data.X_train, data.y_train
    mask = torch.ones(X.shape[0], dtype=torch.float64)
    mask[[3, 10]] = 0.0
    keep = mask.bool()
    masked = logistic.fit(X, y, mask=mask)
    deleted = logistic.fit(X[keep], y[keep])
    assert torch.allclose(masked["weight"], deleted["weight"], atol=1e-10)


def _l2_builders():
    from vif.datasets.graphs import karate
    from vif.tasks import cox, embedding, pairwise, ranking

    X = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    relevance = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    return dict((
        ("logistic", lambda l2: logistic.LogisticRegression(X, y, l2=l2)),
        ("logistic.fit", lambda l2: logistic.fit(X, y, l2=l2)),
        ("pairwise", lambda l2: pairwise.objective(X, y, l2=l2)),
        ("cox", lambda l2: cox.CoxRegression(X, torch.arange(1.0, 7.0, dtype=torch.float64), y, l2=l2)),
        ("ranking", lambda l2: ranking.objective(torch.randn(2, 2, dtype=torch.float64), relevance, l2=l2)),
        ("embedding", lambda l2: embedding.objective(karate(), l2=l2)),
    ))


def test_l2_must_be_a_finite_non_negative_number_in_every_task():
    """``--l2 nan`` used to surface as a non-finite objective 'at the start point' (issue 21, class 9)."""
    import pytest

    from vif.errors import InputError

    for name, build in _l2_builders().items():
        for bad in (float("nan"), float("inf"), -0.5):
            with pytest.raises(InputError, match=r"l2 \(the L2 penalty\) must be a finite number >= 0, got"):
                build(bad)
        assert build(0.5) is not None, name  # a valid penalty builds
