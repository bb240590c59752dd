"""Contrastive (InfoNCE) task: masking equals deleting, the role decomposition sums to the IF, fits converge,
VIF against exact leave-one-out refits, and bad inputs raise vif errors."""

import pytest
import torch
from torch.func import grad

import vif
from vif.datasets.digits import contrastive_digits
from vif.errors import InputError
from vif.experiments import contrastive as experiment
from vif.params import flatten
from vif.tasks import contrastive


@pytest.fixture(scope="module")
def small():
    """A 12-sample task with a linear encoder (6 features -> 3 dimensions) and its fit."""
    torch.manual_seed(0)
    data = contrastive_digits(n_train=12, n_test=5, n_components=6, seed=1)
    task = contrastive.Contrastive(data.train_views, contrastive.encoder("linear", 6, 3), tau=0.5,
                                   weight_decay=0.05, gtol=1e-10)
    return data, task, task.fit()


def deleted_task(task, removed):
    keep = [i for i in range(task.n_units) if i != removed]
    return contrastive.Contrastive(task.views[:, keep], task.module, tau=task.tau, weight_decay=task.weight_decay,
                                   scale=task.scale)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_mask_equals_delete(kind):
    data = contrastive_digits(n_train=9, n_test=4, n_components=5, seed=2)
    task = contrastive.Contrastive(data.train_views, contrastive.encoder(kind, 5, 3, hidden=4), tau=0.3,
                                   weight_decay=0.1)
    params = task.init_params(seed=3)
    theta, unflatten = flatten(params)
    target = task.heldout_loss(data.test_views)
    for removed in (0, 4, 8):
        mask = torch.ones(task.n_units, dtype=torch.float64)
        mask[removed] = 0.0
        other = deleted_task(task, removed)
        keep = torch.tensor([i for i in range(task.n_units) if i != removed])
        masked = task.objective(params, mask)
        assert torch.allclose(masked, other.objective(params, torch.ones(task.n_units - 1, dtype=torch.float64)),
                              rtol=0, atol=1e-12)
        g_masked = grad(lambda t, mask=mask: task.objective(unflatten(t), mask))(theta)
        kept = torch.ones(other.n_units, dtype=torch.float64)
        g_deleted = grad(lambda t, other=other, kept=kept: other.objective(unflatten(t), kept))(theta)
        assert torch.allclose(g_masked, g_deleted, rtol=0, atol=1e-12)
        held_deleted = other.heldout_loss(data.test_views)(params, torch.ones(task.n_units - 1, dtype=torch.float64))
        assert torch.allclose(target(params, mask), held_deleted, rtol=0, atol=1e-12)
        assert keep.numel() == other.n_units


def test_objective_matches_explicit_infonce(small):
    """The vectorised loss against a loop over anchors written from the formula."""
    _, task, params = small
    za, zb = task.embed(params, task.views[0]), task.embed(params, task.views[1])
    total = 0.0
    for i in range(task.n_units):
        for left, right in ((za, zb), (zb, za)):
            scores = left[i] @ right.T / task.tau
            total += torch.logsumexp(scores, 0) - scores[i]
    penalty = 0.5 * task.weight_decay * sum((v ** 2).sum() for v in params.values())
    expected = total / (2 * task.n_units) + penalty
    assert torch.allclose(task.objective(params, torch.ones(task.n_units, dtype=torch.float64)), expected, atol=1e-12)


def test_fit_converges_and_rotation_is_flat(small):
    _, task, params = small
    ones = torch.ones(task.n_units, dtype=torch.float64)
    assert vif.fit.gradient_norm(task.objective, params, ones) <= task.gtol
    theta, unflatten = flatten(params)
    values = torch.linalg.eigvalsh(vif.hessian.hessian_matrix(lambda t: task.objective(unflatten(t), ones), theta))
    assert int((values.abs() < 1e-8 * values.abs().max()).sum()) == 3  # dim (dim - 1) / 2 rotations
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    rotated = {"weight": rotation @ params["weight"]}
    assert torch.allclose(task.objective(rotated, ones), task.objective(params, ones), atol=1e-13)


def test_role_decomposition_sums_to_if(small):
    data, task, params = small
    target = task.heldout_loss(data.test_views)
    total = vif.influence(task, params, target, method="if", hessian=experiment.PINV)
    parts = [vif.influence(task.role_objective(role), params, target, n_units=task.n_units, method="if", hessian=experiment.PINV)
             for role in contrastive.ROLES]
    assert torch.allclose(sum(parts), total, rtol=0, atol=1e-10)
    naive = vif.influence(task.role_objective("anchor"), params, target, n_units=task.n_units, hessian=experiment.PINV)
    assert torch.allclose(naive, parts[0], rtol=0, atol=1e-10)  # linear in the anchor weights: VIF == IF


def test_vif_tracks_exact_loo(small):
    data, task, params = small
    target = task.heldout_loss(data.test_views)
    predicted = vif.influence(task, params, target, hessian=experiment.PINV)
    actual = vif.leave_one_out(task, params, target, progress=False)
    cold = vif.leave_one_out(task, params, target, units=[0, 5], warm_start=False, progress=False)
    assert torch.allclose(cold, actual[[0, 5]], atol=1e-6)  # one basin: cold and warm refits agree
    assert vif.metrics.correlations(predicted, actual).pearson > 0.7  # 12 samples: one removal is 8% of the data
    naive = vif.influence(task.role_objective("anchor"), params, target, n_units=task.n_units, hessian=experiment.PINV)
    assert vif.metrics.correlations(naive, actual).pearson < vif.metrics.correlations(predicted, actual).pearson


def test_warm_refit_meets_gtol(small):
    _, task, params = small
    mask = torch.ones(task.n_units, dtype=torch.float64)
    mask[2] = 0.0
    refit = task.fit(mask, params)
    assert vif.fit.gradient_norm(task.objective, refit, mask) <= task.gtol


def test_pbrf_minimiser_and_gauss_newton(small):
    data, task, params = small
    config = experiment.Settings(n_train=12, n_test=5, n_components=6, dim=3, weight_decay=0.05)
    problem = experiment.Setup(config, data, task, params, 0.0, task.heldout_loss(data.test_views),
                               task.cosine_similarity(data.test_clean[:3], data.test_clean[1:4]))
    pbrf = experiment.proximal(problem, 0.1)
    ones = torch.ones(task.n_units, dtype=torch.float64)
    assert vif.fit.gradient_norm(pbrf.objective, params, ones) < 1e-9  # theta_hat minimises the PBRF at m = 1


def test_bad_inputs_raise():
    views = torch.zeros(2, 5, 3, dtype=torch.float64)
    module = contrastive.encoder("linear", 3, 2)
    with pytest.raises(InputError, match="tau must be positive"):
        contrastive.Contrastive(views, module, tau=0.0)
    with pytest.raises(InputError, match="weight_decay"):
        contrastive.Contrastive(views, module, weight_decay=-1.0)
    with pytest.raises(InputError, match="shape \\(2, n_samples"):
        contrastive.Contrastive(views[0], module)
    with pytest.raises(InputError, match="encoder must be one of"):
        contrastive.encoder("resnet", 3, 2)
    task = contrastive.Contrastive(views, module)
    with pytest.raises(InputError, match="role must be one of"):
        task.role_objective("query")
    with pytest.raises(InputError, match="views must have shape"):
        task.heldout_loss(torch.zeros(2, 4, 7))
    with pytest.raises(InputError, match="n_train \\+ n_test"):
        contrastive_digits(n_train=1500, n_test=400)
    with pytest.raises(InputError, match="drop"):
        contrastive_digits(drop=1.0)


def test_digits_views_are_seeded_and_fitted_on_train():
    first, second = contrastive_digits(n_train=30, n_test=10, seed=4), contrastive_digits(n_train=30, n_test=10, seed=4)
    assert torch.equal(first.train_views, second.train_views)
    assert first.train_views.shape == (2, 30, 16) and first.test_views.shape == (2, 10, 16)
    assert torch.allclose(first.train_clean.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-10)
    assert not torch.equal(first.train_views[0], first.train_views[1])
    assert set(first.train_index.tolist()).isdisjoint(first.test_index.tolist())


def test_mlp_fit_and_warm_refit_converge():
    data = contrastive_digits(n_train=10, n_test=3, n_components=5, seed=5)
    task = contrastive.Contrastive(data.train_views, contrastive.encoder("mlp", 5, 3, hidden=4), tau=0.5,
                                   weight_decay=0.1, gtol=1e-9)
    params = task.fit()
    assert list(params) == ["0.weight", "0.bias", "2.weight"]
    mask = torch.ones(task.n_units, dtype=torch.float64)
    assert vif.fit.gradient_norm(task.objective, params, mask) <= task.gtol
    mask[1] = 0.0
    assert vif.fit.gradient_norm(task.objective, task.fit(mask, params), mask) <= task.gtol


def test_run_compares_every_estimate():
    """The experiment's building blocks on a tiny configuration (the full reproduce is the CLI's job)."""
    config = experiment.Settings(n_train=10, n_test=4, n_pairs=3, n_components=5, dim=3, weight_decay=0.1,
                                 n_cold=2, n_sweep=4)
    out = experiment.run(config)
    assert set(out.correlations) >= {"vif", "if", "naive", "anchor", "positive", "negative", "vif-gn", "pbrf"}
    assert out.details["cold_minus_warm_max"] < 1e-5
    found = out.estimates
    assert torch.allclose(found["anchor"] + found["positive"] + found["negative"], found["if"], atol=1e-10)
    assert torch.allclose(found["naive"], found["anchor"], atol=1e-10)
