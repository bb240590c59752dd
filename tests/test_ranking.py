import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.func import hessian as autograd_hessian

import vif
from vif.errors import InputError
from vif.metrics import ndcg
from vif.params import flatten
from vif.tasks import ranking
from vif.tasks.ranking_hessian import block_jacobi, closed_form_hessian

torch.set_default_dtype(torch.float64)


@pytest.fixture
def problem():
    generator = torch.Generator().manual_seed(0)
    n, d, n_items = 60, 3, 6
    X = torch.randn(n, d, generator=generator)
    R = (torch.rand(n, n_items, generator=generator) < 0.35).double()
    R[:, 0] = 1.0
    R[:5, 1:] = 0.0  # five queries whose only relevant item is item 0
    params = {"weight": 0.4 * torch.randn(n_items, d, generator=generator),
              "bias": 0.4 * torch.randn(n_items, generator=generator)}
    return X, R, params


def _explicit_loss(s, r, loss):
    """One query's loss written from the definitions, on an explicit list (no mask)."""
    log_p = [s[j] - math.log(sum(math.exp(v) for v in s)) for j in range(len(s))]
    relevant = [j for j in range(len(s)) if r[j] == 1]
    if not relevant:
        return 0.0
    if loss == "softmax":
        return -sum(log_p[j] for j in relevant) / len(relevant)
    if loss == "listnet":
        z = sum(math.exp(v) for v in r)
        return -sum(math.exp(r[j]) / z * log_p[j] for j in range(len(s)))
    order = relevant + [j for j in range(len(s)) if r[j] == 0]  # relevant first, by index
    total = 0.0
    for position, j in enumerate(relevant):
        rest = order[position:]
        total += s[j] - math.log(sum(math.exp(s[k]) for k in rest))
    return -total / len(relevant)


@pytest.mark.parametrize("loss", ranking.LOSSES)
def test_masked_losses_equal_losses_on_lists_without_the_item(problem, loss):
    X, R, params = problem
    S = ranking.scores(params, X)
    for removed in (None, 0, 3):
        mask = torch.ones(R.shape[1])
        keep = list(range(R.shape[1]))
        if removed is not None:
            mask[removed] = 0.0
            keep.remove(removed)
        values = ranking.query_losses(S, R, mask, loss)
        for q in range(0, 60, 7):
            expected = _explicit_loss(S[q, keep].tolist(), R[q, keep].tolist(), loss)
            assert float(values[q]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_emptied_queries_give_zero_and_are_listed(problem):
    X, R, params = problem
    mask = torch.ones(R.shape[1])
    mask[0] = 0.0
    for loss in ranking.LOSSES:
        values = ranking.query_losses(ranking.scores(params, X), R, mask, loss)
        assert bool(torch.isfinite(values).all()) and bool((values[:5] == 0).all())
    emptied = ranking.emptied_queries(R, [0, 2])
    assert emptied.shape == (2, 60)
    assert emptied[0].tolist() == (R.sum(dim=1) == 1).tolist() and not emptied[1].any()


@pytest.mark.parametrize("loss", ranking.LOSSES)
def test_closed_form_hessian_matches_autograd(problem, loss):
    X, R, params = problem
    objective = ranking.objective(X, R, loss=loss, l2=1e-2)
    theta, unflatten = flatten(params)
    for mask in (torch.ones(6), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 1.0])):
        expected = autograd_hessian(lambda t, m=mask: objective(unflatten(t), m))(theta)
        found = closed_form_hessian(X, R, params, loss=loss, l2=1e-2, mask=mask)
        assert torch.allclose(found, expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("loss", ranking.LOSSES)
def test_block_jacobi_inverts_the_per_item_blocks(problem, loss):
    X, R, params = problem
    H = closed_form_hessian(X, R, params, loss=loss, l2=1e-2)
    index = ranking.item_parameters(6, 3)
    blocks = H[index[:, :, None], index[:, None, :]]
    apply = block_jacobi(X, R, params, loss=loss, l2=1e-2)
    v = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(1))
    out = apply(v)
    assert torch.allclose(out[index], torch.linalg.solve(blocks, v[index]), atol=1e-12)
    assert torch.allclose(apply(v[:, 0]), out[:, 0])


@pytest.mark.parametrize("loss", ranking.LOSSES)
def test_fit_and_loo_fit_reach_the_masked_optimum(problem, loss):
    X, R, _ = problem
    params = ranking.fit(X, R, loss=loss, l2=1e-2)
    objective = ranking.objective(X, R, loss=loss, l2=1e-2)
    assert vif.fit.gradient_norm(objective, params, torch.ones(6)) <= 1e-10
    mask = torch.ones(6)
    mask[2] = 0.0
    warm = ranking.ListwiseRanking(X, R, loss=loss, l2=1e-2).fit(mask, params)
    cold = vif.fit.newton(objective, ranking.init_params(3, 6, X), mask, gtol=1e-10)
    assert vif.fit.gradient_norm(objective, warm, mask) <= 1e-10
    assert torch.allclose(flatten(warm)[0], flatten(cold)[0], atol=1e-7)
    # the removed item's parameters collapse to the regulariser's optimum
    assert float(warm["weight"][2].abs().max()) < 1e-12 and abs(float(warm["bias"][2])) < 1e-12


def test_vif_is_one_newton_step_and_tracks_exact_loo(problem):
    X, R, _ = problem
    loss, l2 = "softmax", 1e-2
    params = ranking.fit(X, R, loss=loss, l2=l2)
    objective = ranking.objective(X, R, loss=loss, l2=l2)
    H = closed_form_hessian(X, R, params, loss=loss, l2=l2)
    theta, unflatten = flatten(params)
    steps = vif.parameter_influence(objective, params, n_units=6, hessian=H)
    for unit in range(6):
        mask = torch.ones(6)
        mask[unit] = 0.0
        g_removed = torch.func.grad(lambda t, m=mask: objective(unflatten(t), m))(theta)
        g_full = torch.func.grad(lambda t: objective(unflatten(t), torch.ones(6)))(theta)
        assert torch.allclose(steps[unit], -torch.linalg.solve(H, g_removed - g_full), atol=1e-12)
    # against exact leave-one-out on held-out queries (mask-aware target)
    Xt, Rt = X[:20] + 0.1, R[:20]
    target = ranking.target(Xt, Rt, loss=loss)
    predicted = vif.influence(objective, params, target, n_units=6, hessian=H)
    actual = vif.leave_one_out(ranking.ListwiseRanking(X, R, loss=loss, l2=l2), params, target, n_units=6,
                               progress=False)
    valid = ~ranking.emptied_queries(Rt)
    assert vif.metrics.correlations(predicted, actual, valid=valid).pearson > 0.98
    # holding the removed item's own parameters out: the Schur complement step, closer to exact LOO
    own = ranking.item_parameters(6, 3)
    held_out = vif.parameter_influence(objective, params, n_units=6, hessian=H, unit_params=own)
    for unit in range(3):
        mask = torch.ones(6)
        mask[unit] = 0.0
        kept = torch.ones(H.shape[0], dtype=torch.bool)
        kept[own[unit]] = False
        g_removed = torch.func.grad(lambda t, m=mask: objective(unflatten(t), m))(theta)
        assert torch.allclose(held_out[unit, kept], -torch.linalg.solve(H[kept][:, kept], g_removed[kept]), atol=1e-12)
        assert bool((held_out[unit, own[unit]] == 0).all())
    predicted_held_out = vif.influence(objective, params, target, n_units=6, hessian=H, unit_params=own)
    error = (predicted - actual)[torch.as_tensor(valid)].abs().mean()
    error_held_out = (predicted_held_out - actual)[torch.as_tensor(valid)].abs().mean()
    # never worse here; the large gains need the book's shapes (many items, see chapter 4)
    assert error_held_out <= error, (float(error_held_out), float(error))


@pytest.mark.parametrize("loss", ranking.LOSSES)
def test_infinitesimal_influence_is_finite(problem, loss):
    X, R, _ = problem
    params = ranking.fit(X, R, loss=loss, l2=1e-2)
    objective = ranking.objective(X, R, loss=loss, l2=1e-2)
    values = vif.influence(objective, params, ranking.target(X[:10], R[:10], loss=loss), n_units=6, method="if",
                           hessian=closed_form_hessian(X, R, params, loss=loss, l2=1e-2))
    assert values.shape == (6, 10) and bool(torch.isfinite(values).all())


def test_sparse_relevance_equals_dense(problem):
    X, R, params = problem
    dense = ranking.objective(X, R)(params, torch.ones(6))
    scipy_sparse = ranking.objective(X.numpy(), sp.csr_matrix(R.numpy()))(params, torch.ones(6))
    torch_sparse = ranking.objective(X, R.to_sparse())(params, torch.ones(6))
    assert float(dense) == float(scipy_sparse) == float(torch_sparse)


def test_bad_inputs_name_the_problem(problem):
    X, R, _ = problem
    with pytest.raises(InputError, match="0 and 1"):
        ranking.objective(X, 2 * R)
    with pytest.raises(InputError, match="same number of rows"):
        ranking.objective(X[:10], R)
    with pytest.raises(InputError, match="loss='lambdarank'"):
        ranking.objective(X, R, loss="lambdarank")
    with pytest.raises(InputError, match=r"l2 \(the L2 penalty\) must be a finite number >= 0, got -1.0"):
        ranking.objective(X, R, l2=-1.0)
    with pytest.raises(InputError, match="NaN"):
        ranking.objective(torch.full_like(X, float("nan")), R)


def test_ndcg_known_values():
    R = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    perfect = torch.tensor([[3.0, 0.0, 2.0, 1.0]])
    assert float(ndcg(perfect, R, k=4)[0]) == pytest.approx(1.0)
    swapped = torch.tensor([[3.0, 2.0, 0.0, 1.0]])  # relevant at ranks 1 and 4
    expected = (1 + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert float(ndcg(swapped, R, k=4)[0]) == pytest.approx(expected)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])  # removing the irrelevant item at rank 2 restores the order
    assert float(ndcg(swapped, R, mask, k=4)[0]) == pytest.approx((1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))
    assert math.isnan(float(ndcg(perfect, torch.zeros(1, 4), k=4)[0]))
