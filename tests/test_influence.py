"""The influence engine against independent truth: closed forms, the classical formula, exact LOO refits."""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian, jacrev

import vif
from vif.datasets.tabular import breast_cancer
from vif.errors import InputError
from vif.tasks import logistic, pairwise


@pytest.fixture(scope="module")
def cancer():
    data = breast_cancer(seed=0)
    theta = logistic.fit(data.X_train, data.y_train)
    return data, theta


def _classical_removal(data, theta, l2):
    """Koh & Liang's removal estimate H^-1 grad l_i (summed-loss convention), written out independently."""
    names = list(theta)
    flat = torch.cat([theta[name].reshape(-1) for name in names])
    d = data.X_train.shape[1]

    def unpack(vector):
        return {"weight": vector[:d], "bias": vector[d]}

    def total(vector):
        return logistic.losses(unpack(vector), data.X_train, data.y_train).sum() + 0.5 * l2 * vector[:d].square().sum()

    H = hessian(total)(flat)
    per_example = jacrev(lambda vector: logistic.losses(unpack(vector), data.X_train, data.y_train))(flat)
    return torch.linalg.solve(H, per_example.T).T  # (n, n_params)


def test_vif_equals_classical_influence_for_decomposable_logistic_loss(cancer):
    data, theta = cancer
    predicted = vif.parameter_influence(logistic.objective(data.X_train, data.y_train), theta,
                                        n_units=data.X_train.shape[0])
    classical = _classical_removal(data, theta, logistic.DEFAULT_L2)
    assert torch.allclose(predicted, classical, rtol=0, atol=1e-8)
    assert float(classical.abs().max()) > 1e-2  # the comparison is not trivially between zeros


def test_vif_and_if_track_exact_loo_on_breast_cancer(cancer):
    data, theta = cancer
    X, y = data.X_train, data.y_train
    units = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(1))[:80]

    def target(params):
        return logistic.losses(params, data.X_test, data.y_test)

    objective = logistic.objective(X, y)
    actual = vif.leave_one_out(lambda mask, init: logistic.fit(X, y, mask=mask, init=init), theta, target,
                               n_units=X.shape[0], units=units, progress=False)
    for method in ("vif", "if"):
        predicted = vif.influence(objective, theta, target, n_units=X.shape[0], units=units, method=method)
        assert vif.metrics.correlations(predicted, actual).pearson >= 0.99


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weighted_least_squares_against_the_hat_matrix_formula(dtype):
    """WLS: exact LOO is beta_-i - beta = -(X'WX)^-1 x_i w_i r_i / (1 - h_ii); VIF is that times (1 - h_ii)."""
    generator = torch.Generator().manual_seed(0)
    n, d = 40, 3
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    w = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(n, generator=generator, dtype=torch.float64)
    X, w, y = X.to(dtype), w.to(dtype), y.to(dtype)

    def objective(beta, mask):
        return 0.5 * (mask * w * (y - X @ beta).square()).sum()

    def fit(mask, init=None):
        weights = mask * w
        return torch.linalg.solve(X.T @ (weights[:, None] * X), X.T @ (weights * y))

    beta = fit(torch.ones(n, dtype=dtype))
    gram_inverse = torch.linalg.inv(X.T @ (w[:, None] * X))
    residual = y - X @ beta
    leverage = w * torch.einsum("id,de,ie->i", X, gram_inverse, X)
    exact = -(gram_inverse @ (X * (w * residual)[:, None]).T).T / (1 - leverage)[:, None]

    tolerance = 1e-10 if dtype == torch.float64 else 2e-4
    refits = vif.leave_one_out(fit, beta, lambda b: b, n_units=n, progress=False)
    assert torch.allclose(refits, exact, atol=tolerance, rtol=0)
    for method in ("vif", "if"):  # the objective is affine in each mask entry: VIF = IF
        predicted = vif.parameter_influence(objective, beta, n_units=n, method=method)
        assert torch.allclose(predicted / (1 - leverage)[:, None], exact, atol=tolerance, rtol=0)
    assert predicted.dtype == dtype


def test_vif_tracks_loo_for_a_pairwise_loss_and_beats_the_per_example_split():
    generator = torch.Generator().manual_seed(0)
    n, d = 60, 5
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    scores = X @ torch.randn(d, generator=generator, dtype=torch.float64)
    y = torch.bucketize(scores + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64),
                        torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)).double()
    X_test = torch.randn(20, d, generator=generator, dtype=torch.float64)
    weight = pairwise.fit(X, y)
    objective = pairwise.objective(X, y)

    def target(w):
        return X_test @ w

    actual = vif.leave_one_out(lambda mask, init: pairwise.fit(X, y, mask=mask, init=init), weight, target,
                               n_units=n, progress=False)
    predicted = vif.influence(objective, weight, target, n_units=n)
    assert vif.metrics.correlations(predicted, actual).pearson >= 0.99

    H = hessian(lambda w: objective(w, torch.ones(n, dtype=torch.float64)))(weight)
    naive = torch.linalg.solve(H, jacrev(lambda w: pairwise.winner_losses(w, X, y))(weight).T).T @ X_test.T
    assert vif.metrics.correlations(naive, actual).pearson < 0.9


def test_eps_path_interpolates_between_if_and_vif():
    """For a Cox-like log-sum term the mask path is curved: eps -> 0 gives the IF, eps = 1 gives VIF."""
    generator = torch.Generator().manual_seed(2)
    n = 12
    x = torch.randn(n, generator=generator, dtype=torch.float64)

    def objective(beta, mask):  # -sum_i m_i [b x_i - log sum_{j >= i} m_j exp(b x_j)] + b^2/2
        weights = mask * torch.exp(beta * x)
        risk = torch.flip(torch.cumsum(torch.flip(weights, [0]), 0), [0])
        safe_risk = torch.where(risk > 0, risk, torch.ones_like(risk))  # the last unit's removal empties its set
        return -(mask * (beta * x - torch.log(safe_risk))).sum() + 0.5 * beta**2

    beta = vif.fit.newton(objective, torch.zeros((), dtype=torch.float64), torch.ones(n, dtype=torch.float64))
    values = {eps: vif.parameter_influence(objective, beta, n_units=n, eps=eps) for eps in (1e-6, 0.5, 1.0)}
    infinitesimal = vif.parameter_influence(objective, beta, n_units=n, method="if")  # Jacobian d g/d m route
    one_unit_at_a_time = vif.parameter_influence(objective, beta, n_units=n, method="if", vectorize=False)
    assert torch.allclose(infinitesimal, one_unit_at_a_time, atol=1e-12)
    per_target = vif.influence(objective, beta, lambda b: torch.stack([b, 2 * b]), n_units=n, method="if")
    assert torch.allclose(per_target, infinitesimal * torch.tensor([1.0, 2.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(values[1e-6], infinitesimal, atol=1e-5)
    assert not torch.allclose(values[1.0], infinitesimal, atol=1e-4)
    assert torch.allclose(values[1.0], vif.influence(objective, beta, lambda b: b, n_units=n)[:, None])


def test_mask_aware_target_uses_the_mask_of_the_removed_unit():
    generator = torch.Generator().manual_seed(3)
    n = 15
    X = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(n, generator=generator, dtype=torch.float64)

    def objective(beta, mask):
        return 0.5 * (mask * (y - X @ beta).square()).sum() + 0.5 * beta.square().sum()

    def fit(mask, init=None):
        return torch.linalg.solve(X.T @ (mask[:, None] * X) + torch.eye(2, dtype=X.dtype), X.T @ (mask * y))

    beta = fit(torch.ones(n, dtype=torch.float64))

    def target(b, mask):  # mean squared residual over the units still present
        return (mask * (y - X @ b).square()).sum() / mask.sum()

    predicted = vif.influence(objective, beta, target, n_units=n)
    actual = vif.leave_one_out(fit, beta, target, n_units=n, progress=False)
    assert predicted.shape == (n,)
    assert vif.metrics.correlations(predicted, actual).pearson > 0.95
    # Computed by hand: grad target(beta, 1_-i) . delta_beta_i
    steps = vif.parameter_influence(objective, beta, n_units=n)
    by_hand = torch.stack([
        torch.func.grad(target)(beta, vif.params.removal_mask(n, i, beta)) @ steps[i] for i in range(n)
    ])
    assert torch.allclose(predicted, by_hand, atol=1e-12)


def test_units_subset_and_chunking_do_not_change_results(cancer):
    data, theta = cancer
    objective = logistic.objective(data.X_train, data.y_train)

    def target(params):
        return logistic.losses(params, data.X_test[:3], data.y_test[:3])

    everything = vif.influence(objective, theta, target, n_units=data.X_train.shape[0], chunk_size=500)
    units = torch.tensor([5, 0, 17])
    subset = vif.influence(objective, theta, target, n_units=data.X_train.shape[0], units=units, chunk_size=2)
    looped = vif.influence(objective, theta, target, n_units=data.X_train.shape[0], units=units, vectorize=False)
    assert torch.allclose(subset, everything[units], atol=1e-12)
    assert torch.allclose(looped, everything[units], atol=1e-12)
    # many targets, few units (unit route) agrees with the target route
    many = vif.influence(objective, theta, lambda p: logistic.losses(p, data.X_test, data.y_test),
                         n_units=data.X_train.shape[0], units=units)
    full = vif.influence(objective, theta, lambda p: logistic.losses(p, data.X_test, data.y_test),
                         n_units=data.X_train.shape[0])
    assert torch.allclose(many, full[units], atol=1e-10)


def _owned_quadratic():
    """A quadratic objective in which each unit j owns one parameter theta_j that leaves the model with it.

    ``L = 1/2 s'As - a's + sum_j m_j (theta_j^2 / 2 - theta_j b_j's - c_j theta_j) + l2/2 |theta|^2`` with
    shared parameters ``s`` (first 3 entries). Removing ``j`` leaves the other blocks of the Hessian unchanged,
    so the held-out Newton step is exact, while the full-data Hessian still couples ``theta_j`` to ``s``.
    """
    generator = torch.Generator().manual_seed(5)
    p, n, l2 = 3, 6, 0.1
    A = 4.0 * torch.eye(p, dtype=torch.float64) + 0.3 * torch.randn(p, p, generator=generator, dtype=torch.float64)
    A = 0.5 * (A + A.T)
    a, c = torch.randn(p, generator=generator, dtype=torch.float64), torch.randn(n, generator=generator, dtype=torch.float64)
    B = 0.4 * torch.randn(n, p, generator=generator, dtype=torch.float64)

    def objective(theta, mask):
        s, own = theta[:p], theta[p:]
        data = 0.5 * s @ A @ s - a @ s + (mask * (0.5 * own.square() - own * (B @ s) - c * own)).sum()
        return data + 0.5 * l2 * theta.square().sum()

    def exact_fit(mask):  # the stationarity equations, solved directly
        matrix = torch.zeros(p + n, p + n, dtype=torch.float64)
        matrix[:p, :p] = A
        matrix[:p, p:] = -(mask[:, None] * B).T
        matrix[p:, :p] = -(mask[:, None] * B)
        matrix[p:, p:] = torch.diag(mask)
        matrix += l2 * torch.eye(p + n, dtype=torch.float64)
        return torch.linalg.solve(matrix, torch.cat([a, mask * c]))

    theta_hat = exact_fit(torch.ones(n, dtype=torch.float64))
    unit_params = [[p + j] for j in range(n)]
    return objective, exact_fit, theta_hat, unit_params, p, n


def test_held_out_unit_parameters_give_the_exact_step_when_the_rest_of_the_hessian_is_unchanged():
    objective, exact_fit, theta_hat, unit_params, p, n = _owned_quadratic()
    actual = torch.stack([exact_fit(vif.params.removal_mask(n, j, theta_hat)) - theta_hat for j in range(n)])
    held_out = vif.parameter_influence(objective, theta_hat, n_units=n, unit_params=unit_params)
    plain = vif.parameter_influence(objective, theta_hat, n_units=n)
    kept = torch.ones(n, p + n, dtype=torch.bool)
    kept[torch.arange(n), p + torch.arange(n)] = False
    assert torch.allclose(held_out[kept], actual[kept], atol=1e-12)
    assert torch.all(held_out[~kept] == 0)
    assert (plain[kept] - actual[kept]).abs().max() > 1e-3  # the coupling the held-out step removes
    # on a target that does not read the removed parameter; every solver agrees with the exact value
    target = torch.linspace(-1.0, 1.0, p, dtype=torch.float64)
    actual_target = actual[:, :p] @ target
    for options in [{}, {"hessian": vif.solvers.CG(tol=1e-12)}, {"chunk_size": 4}, {"vectorize": False}]:
        predicted = vif.influence(objective, theta_hat, lambda theta: theta[:p] @ target, n_units=n,
                                  unit_params=torch.tensor(unit_params), **options)
        assert torch.allclose(predicted, actual_target, atol=1e-9), options


def test_held_out_unit_parameters_are_checked():
    objective, _, theta_hat, unit_params, p, n = _owned_quadratic()
    with pytest.raises(InputError, match="eps=1"):
        vif.parameter_influence(objective, theta_hat, n_units=n, method="if", unit_params=unit_params)
    with pytest.raises(InputError, match="invertible Hessian"):
        vif.parameter_influence(objective, theta_hat, n_units=n, hessian="pinv", unit_params=unit_params)
    with pytest.raises(InputError, match="one entry per unit"):
        vif.parameter_influence(objective, theta_hat, n_units=n, unit_params=unit_params[:-1])
    with pytest.raises(InputError, match="distinct"):
        vif.parameter_influence(objective, theta_hat, n_units=n, unit_params=[[p + n]] * n)
    with pytest.raises(InputError, match="still coupled"):  # a shared parameter does not leave the model
        vif.parameter_influence(objective, theta_hat, n_units=n, unit_params=[[0, p + j] for j in range(n)])
