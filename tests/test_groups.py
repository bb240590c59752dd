"""Group removals (groups=), the LDS harness, the second-order group step and Forward-INF.

Truths: the exact group-deletion formula of ridge regression, explicit refits on the data with the group
deleted (ridge and Cox), autodiff of the masked gradient, and brute-force subset refits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

import vif
from vif import datamodels
from vif.errors import InputError
from vif.forward import forward_influence
from vif.metrics import correlations, lds
from vif.tasks.cox import CoxRegression

N, P, LAMBDA = 30, 3, 0.5
GENERATOR = torch.Generator().manual_seed(0)
X = torch.randn(N, P, generator=GENERATOR, dtype=torch.float64)
Y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(N, generator=GENERATOR, dtype=torch.float64)
WEIGHTS = 0.5 + torch.rand(N, generator=GENERATOR, dtype=torch.float64)  # weighted least squares
GROUPS = [np.array([0, 1, 2]), np.array([5]), np.array([3, 7, 11, 19, 20, 21, 22]), np.array([2, 3, 4])]  # overlapping


def objective(beta, mask):
    return 0.5 * (mask * WEIGHTS * (Y - X @ beta).square()).sum() + 0.5 * LAMBDA * beta.square().sum()


def fit(mask, init=None):
    w = mask * WEIGHTS
    return torch.linalg.solve(X.T @ (w[:, None] * X) + LAMBDA * torch.eye(P, dtype=X.dtype), X.T @ (w * Y))


BETA = fit(torch.ones(N, dtype=torch.float64))
H = X.T @ (WEIGHTS[:, None] * X) + LAMBDA * torch.eye(P, dtype=X.dtype)


def target(beta):
    return torch.cat([beta.sum()[None], (beta[0] * beta[1])[None], X[:4] @ beta])


def _deleted(group):
    keep = np.setdiff1d(np.arange(N), group)
    w = WEIGHTS[keep]
    matrix = X[keep].T @ (w[:, None] * X[keep]) + LAMBDA * torch.eye(P, dtype=X.dtype)
    return torch.linalg.solve(matrix, X[keep].T @ (w * Y[keep]))


def test_ridge_group_vif_is_the_first_order_deletion_formula():
    steps = vif.parameter_influence(objective, BETA, n_units=N, groups=GROUPS)
    for row, group in enumerate(GROUPS):
        XG, rG, wG = X[group], (Y - X @ BETA)[group], WEIGHTS[group]
        grad_term = XG.T @ (wG * rG)
        torch.testing.assert_close(steps[row], -torch.linalg.solve(H, grad_term), rtol=1e-10, atol=1e-12)
        exact = -torch.linalg.solve(H - XG.T @ (wG[:, None] * XG), grad_term)  # exact group deletion
        torch.testing.assert_close(exact, _deleted(group) - BETA, rtol=1e-9, atol=1e-12)
        # relation: exact = (I - H^-1 X_G^T W_G X_G)^-1 VIF
        relation = torch.linalg.solve(torch.eye(P, dtype=X.dtype) - torch.linalg.solve(H, XG.T @ (wG[:, None] * XG)), steps[row])
        torch.testing.assert_close(relation, exact, rtol=1e-9, atol=1e-12)


def test_ridge_group_loo_equals_explicit_refits_and_second_order_is_exact():
    actual, thetas = vif.leave_one_out(fit, BETA, target, n_units=N, groups=GROUPS, progress=False, return_params=True)
    for row, group in enumerate(GROUPS):
        torch.testing.assert_close(thetas[row], _deleted(group), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(actual[row], target(_deleted(group)) - target(BETA), rtol=1e-10, atol=1e-12)
    # on a quadratic the Neumann series of the group step converges to the exact deletion (parameters, linear target)
    linear = lambda beta: X[:4] @ beta  # noqa: E731
    second = datamodels.second_order_influence(objective, BETA, linear, n_units=N, groups=GROUPS, terms=60)
    torch.testing.assert_close(second, actual[:, 2:], rtol=1e-8, atol=1e-10)
    first = datamodels.second_order_influence(objective, BETA, linear, n_units=N, groups=GROUPS, terms=0)
    torch.testing.assert_close(first, vif.influence(objective, BETA, linear, n_units=N, groups=GROUPS))
    one = datamodels.second_order_influence(objective, BETA, linear, n_units=N, groups=GROUPS, terms=1)
    assert (one - actual[:, 2:]).norm() < 0.5 * (first - actual[:, 2:]).norm()


def test_labels_equal_lists_and_ridge_vif_is_additive():
    labels = np.full(N, -1)
    labels[[0, 1, 2]], labels[[10, 12]], labels[[25]] = 4, 1, 7  # sorted label order: 1, 4, 7
    as_list = [np.array([10, 12]), np.array([0, 1, 2]), np.array([25])]
    for method in ("vif", "if"):
        expected = vif.influence(objective, BETA, target, n_units=N, groups=as_list, method=method)
        for form in (labels, torch.as_tensor(labels), list(labels)):
            torch.testing.assert_close(vif.influence(objective, BETA, target, n_units=N, groups=form, method=method), expected)
    torch.testing.assert_close(vif.leave_one_out(fit, BETA, target, n_units=N, groups=labels, progress=False),
                               vif.leave_one_out(fit, BETA, target, n_units=N, groups=as_list, progress=False))
    single = vif.influence(objective, BETA, target, n_units=N)
    group = vif.influence(objective, BETA, target, n_units=N, groups=GROUPS)
    for row, members in enumerate(GROUPS):  # the gradient is linear in the mask: VIF is additive here
        torch.testing.assert_close(group[row], single[members].sum(0), rtol=1e-10, atol=1e-12)


def test_bad_groups_are_input_errors():
    for bad, match in [([np.array([], dtype=int)], "empty"), ([], "non-empty"), ([np.array([0, N])], "outside"),
                       (np.zeros(N - 1, dtype=int), "label vector"), ([np.array([0.5])], "integer"),
                       (np.full(N, -1), "at least one group")]:
        with pytest.raises(InputError, match=match):
            vif.influence(objective, BETA, target, n_units=N, groups=bad)
    with pytest.raises(InputError, match="empty"):
        vif.leave_one_out(fit, BETA, target, n_units=N, groups=[[1], []], progress=False)
    with pytest.raises(InputError, match="not both"):
        vif.influence(objective, BETA, target, n_units=N, groups=GROUPS, units=[0])


# --- Cox: non-decomposable, group VIF is not the sum of single VIFs ------------------------------------------
CG = torch.Generator().manual_seed(1)
XC = torch.randn(40, 2, generator=CG, dtype=torch.float64)
TC = torch.rand(40, generator=CG, dtype=torch.float64) * torch.exp(-XC @ torch.tensor([0.8, -0.5], dtype=torch.float64))
EC = (torch.rand(40, generator=CG, dtype=torch.float64) < 0.8).double()
COX = CoxRegression(XC, TC, EC, ties="breslow", gtol=1e-12)
BETA_C = COX.fit()
COX_GROUPS = [np.arange(0, 8), np.array([3, 17]), np.arange(10, 30), np.array([4, 5, 6, 30])]


def cox_target(beta):
    return torch.cat([torch.exp(XC[:5] @ beta), beta])


def test_cox_group_vif_matches_autodiff_and_loo_matches_deleting():
    ones = torch.ones(40, dtype=torch.float64)
    H_full = hessian(lambda b: COX.objective(b, ones))(BETA_C)
    predicted = vif.parameter_influence(COX, BETA_C, groups=COX_GROUPS)
    actual = vif.leave_one_out(COX, BETA_C, cox_target, groups=COX_GROUPS, progress=False)
    for row, group in enumerate(COX_GROUPS):
        mask = ones.clone()
        mask[group] = 0.0
        difference = grad(COX.objective)(BETA_C, mask) - grad(COX.objective)(BETA_C, ones)
        torch.testing.assert_close(predicted[row], -torch.linalg.solve(H_full, difference), rtol=1e-9, atol=1e-12)
        keep = np.setdiff1d(np.arange(40), group)
        deleted = CoxRegression(XC[keep], TC[keep], EC[keep], ties="breslow", gtol=1e-12).fit()
        torch.testing.assert_close(actual[row], cox_target(deleted) - cox_target(BETA_C), rtol=1e-7, atol=1e-9)
    single = vif.parameter_influence(COX, BETA_C)
    summed = torch.stack([single[group].sum(0) for group in COX_GROUPS])
    assert (predicted - summed).abs().max() > 1e-3  # not additive: the risk sets couple the units
    # half the patients removed: H_{-G} ~ H / 2, so group VIF undershoots; one Neumann term of H_{-G} helps
    truth = vif.leave_one_out(COX, BETA_C, lambda b: b, groups=COX_GROUPS, progress=False)
    second = datamodels.second_order_influence(COX, BETA_C, lambda b: b, groups=COX_GROUPS, terms=1)
    assert (second - truth).norm(dim=1)[2] < 0.6 * (predicted - truth).norm(dim=1)[2]


def test_cox_coupling_terms_match_the_closed_form():
    """Group VIF minus summed single VIFs equals -H^-1 sum_k d_k sum_{i in G cap R_k, i != k} w_i (xbar_k - x_i) c_ki."""
    ones = torch.ones(40, dtype=torch.float64)
    H_full = hessian(lambda b: COX.objective(b, ones))(BETA_C)
    w = torch.exp(XC @ BETA_C)
    group_vif = vif.parameter_influence(COX, BETA_C, groups=COX_GROUPS)
    single = vif.parameter_influence(COX, BETA_C)
    for row, group in enumerate(COX_GROUPS):
        members = set(group.tolist())
        bracket = torch.zeros(2, dtype=torch.float64)
        for k in range(40):
            if EC[k] == 0:
                continue
            at_risk = TC >= TC[k]
            S = w[at_risk].sum()
            xbar = (w[at_risk, None] * XC[at_risk]).sum(0) / S
            W = sum(float(w[i]) for i in members if at_risk[i])
            for i in members:
                if i == k or not at_risk[i]:
                    continue
                c = -1.0 / (S - w[i]) if k in members else 1.0 / (S - W) - 1.0 / (S - w[i])
                bracket += w[i] * (xbar - XC[i]) * c
        torch.testing.assert_close(group_vif[row] - single[group].sum(0), -torch.linalg.solve(H_full, bracket),
                                   rtol=1e-8, atol=1e-12)


def test_cox_group_if_is_sum_of_single_ifs():
    single = vif.influence(COX, BETA_C, cox_target, method="if")
    group = vif.influence(COX, BETA_C, cox_target, method="if", groups=COX_GROUPS)
    for row, members in enumerate(COX_GROUPS):
        torch.testing.assert_close(group[row], single[members].sum(0), rtol=1e-9, atol=1e-12)
    # overlapping groups are each removed on their own: same as asking for them one at a time
    for row, members in enumerate(COX_GROUPS):
        alone = vif.influence(COX, BETA_C, cox_target, groups=[members])
        torch.testing.assert_close(vif.influence(COX, BETA_C, cox_target, groups=COX_GROUPS)[row], alone[0])


# --- LDS harness ------------------------------------------------------------------------------------------------
class FlakyFit:
    """The ridge fit that raises after ``fail_after`` calls (a stand-in for an interrupted job)."""

    def __init__(self, fail_after=None):
        # private: bookkeeping, which the leave-one-out cache key (a hash of a fit's public attributes) leaves out
        self._fail_after, self._calls = fail_after, 0

    @property
    def calls(self):
        return self._calls

    def __call__(self, mask, init=None):
        self._calls += 1
        if self._fail_after is not None and self._calls > self._fail_after:
            raise RuntimeError("interrupted")
        return fit(mask, init)


def _subset_truth(subsets):
    return torch.stack([target(fit(torch.as_tensor(row, dtype=torch.float64))) - target(BETA) for row in subsets.kept])


def test_subsets_are_seeded_and_the_linear_datamodel_sums_removed_units():
    subsets = datamodels.sample_subsets(N, 20, 0.5, seed=3)
    assert subsets.kept.shape == (20, N) and (subsets.kept.sum(1) == 15).all()
    np.testing.assert_array_equal(subsets.kept, datamodels.sample_subsets(N, 20, 0.5, seed=3).kept)
    assert not np.array_equal(subsets.kept, datamodels.sample_subsets(N, 20, 0.5, seed=4).kept)
    per_unit = torch.randn(N, 2, generator=GENERATOR, dtype=torch.float64)
    predicted = datamodels.linear_datamodel(per_unit, subsets)
    torch.testing.assert_close(predicted[5], per_unit[subsets.removed[5]].sum(0))
    for bad in (0.0, 1.0, 1.2):
        with pytest.raises(InputError, match="alpha"):
            datamodels.sample_subsets(N, 5, bad, seed=0)
    with pytest.raises(InputError, match="per_unit"):
        datamodels.linear_datamodel(per_unit[:-1], subsets)


def test_lds_harness_resumes_and_runs_in_parallel(tmp_path):
    subsets = datamodels.sample_subsets(N, 12, 0.5, seed=0)
    flaky = FlakyFit(fail_after=5)
    with pytest.raises(RuntimeError, match="interrupted"):
        datamodels.subset_changes(flaky, BETA, target, subsets, n_units=N, cache_dir=tmp_path,
                                  cache_key="ridge")
    assert len(list(tmp_path.glob("loo-*/group-*.pt"))) == 5
    resumed = FlakyFit()
    actual = datamodels.subset_changes(resumed, BETA, target, subsets, n_units=N, cache_dir=tmp_path,
                                  cache_key="ridge")
    assert resumed.calls == 7  # only the missing refits ran
    torch.testing.assert_close(actual, _subset_truth(subsets), rtol=1e-10, atol=1e-12)
    parallel = datamodels.subset_changes(fit, BETA, target, subsets, n_units=N, n_jobs=2)
    torch.testing.assert_close(parallel, actual, rtol=1e-12, atol=1e-14)
    # ridge: the gradient is linear in the mask, so the group VIF of a complement equals the linear datamodel
    single = vif.influence(objective, BETA, target, n_units=N)
    group = vif.influence(objective, BETA, target, n_units=N, groups=subsets.removed)
    torch.testing.assert_close(group, datamodels.linear_datamodel(single, subsets))
    score = lds(datamodels.linear_datamodel(single, subsets), actual)
    assert score == pytest.approx(correlations(group, actual).spearman) and score > 0.8


# --- Forward-INF --------------------------------------------------------------------------------------------------
def test_forward_inf_is_the_identity_hessian_influence():
    """Score ~ grad f . grad d_r with d_r = L(., 1) - L(., 1 - r): VIF with H^-1 replaced by I."""
    linear = lambda beta: X[:4] @ beta  # noqa: E731
    scores = forward_influence(objective, BETA, linear, n_units=N, steps=2, step_size=1e-6)
    differences = vif.parameter_influence(objective, BETA, n_units=N, hessian=vif.solvers.Exact(operator=lambda v: v))
    torch.testing.assert_close(scores, differences @ X[:4].T, rtol=2e-3, atol=1e-6)
    group_scores = forward_influence(objective, BETA, linear, n_units=N, groups=GROUPS, steps=2, step_size=1e-6)
    torch.testing.assert_close(group_scores, torch.stack([scores[g].sum(0) for g in GROUPS]), rtol=2e-3, atol=1e-6)
    with pytest.raises(InputError, match="steps"):
        forward_influence(objective, BETA, linear, n_units=N, steps=0)


# --- the experiment's plumbing on the ridge task ---------------------------------------------------------------
class Ridge:
    """The weighted ridge model above as a task."""

    n_units = N

    def objective(self, beta, mask):
        return objective(beta, mask)

    def fit(self, mask=None, init=None):
        return fit(torch.ones(N, dtype=torch.float64) if mask is None else mask)


def test_group_curves_and_lds_scores_on_ridge(tmp_path):
    from vif.experiments import Comparison
    from vif.experiments import groups as experiment

    case = experiment.Case("ridge", Ridge(), BETA, lambda beta: X[:6] @ beta, "exact", "ridge",
                           named={"a": np.arange(0, 10), "b": np.arange(10, 20), "c": np.arange(20, 30)},
                           order=np.arange(N))
    curves = experiment.group_curves(case, (1, 2, 5), 4, seed=0, cache_dir=tmp_path)
    assert curves.settings["sizes"] == [1, 2, 5] and curves.settings["n_groups"] == 2 * 3 * 4 + 3
    assert curves.settings["named_across"] == "targets"
    estimates = curves.estimates
    torch.testing.assert_close(estimates["group VIF"], estimates["summed VIF"])  # decomposable: additive
    torch.testing.assert_close(estimates["group IF"], estimates["summed VIF"])
    assert all(len(group) == 5 for group in experiment.local_groups(np.arange(N), (5,), 4))
    for family in ("random", "local"):
        scores = curves.correlations[family]["5"]
        assert scores["2nd order"]["relative_error"] < scores["group VIF"]["relative_error"]
    scores = experiment.lds_scores(case, 0.5, 12, seed=0, cache_dir=tmp_path)
    assert scores["lds"]["group VIF"] == pytest.approx(scores["lds"]["summed VIF"])
    assert scores["least_squares_scale"]["group VIF"] > 1.3  # half the data removed: first order undershoots
    frame = experiment.table(Comparison(parts={"ridge": curves}))
    assert set(frame.predictor) == set(experiment.PREDICTORS) and len(frame) == 2 * 3 * 5
