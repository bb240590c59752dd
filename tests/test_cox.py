"""Cox objective and fit: mask semantics against real deletion, lifelines as reference, influence vs LOO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from torch.func import grad

import vif
from survival_data import tied_data
from vif.errors import ConvergenceError, InputError, MaskError
from vif.tasks import cox


def _tied_data(n: int = 40, p: int = 3, seed: int = 0):
    return tied_data(n, p, seed)


def _rossi():
    frame = load_rossi()
    x = frame.drop(columns=["week", "arrest"])
    return frame, x.to_numpy(float), frame["week"].to_numpy(float), frame["arrest"].to_numpy(float)


@pytest.mark.parametrize("ties", cox.TIES)
def test_mask_equals_deletion(ties):
    x, time, event, last = _tied_data()
    tied_events = [i for i in range(len(time)) if event[i] == 1 and (time == time[i]).sum() > 2]
    beta = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)
    loss = cox.objective(x, time, event, ties=ties)
    cases = [[last], tied_events[:1], tied_events[:2], [0, 5, 7], [last, 1]]
    for removed in cases:
        keep = np.setdiff1d(np.arange(len(time)), removed)
        mask = torch.ones(len(time), dtype=torch.float64)
        mask[removed] = 0.0
        deleted = cox.objective(x[keep], time[keep], event[keep], ties=ties)
        ones = torch.ones(len(keep), dtype=torch.float64)
        value = loss(beta, mask)
        assert torch.isfinite(value)
        torch.testing.assert_close(value, deleted(beta, ones), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad(loss)(beta, mask), grad(deleted)(beta, ones), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ties", cox.TIES)
def test_emptied_risk_set_and_tie_group_are_finite(ties):
    x, time, event, last = _tied_data()
    loss = cox.objective(x, time, event, ties=ties)
    beta = torch.zeros(3, dtype=torch.float64)
    group = np.flatnonzero(time == time[np.flatnonzero(event == 1)[0]])  # a whole tie group, events included
    mask = torch.ones(len(time), dtype=torch.float64)
    mask[group] = 0.0
    mask[last] = 0.0  # the last risk set is now empty
    keep = mask.numpy() == 1
    deleted = cox.objective(x[keep], time[keep], event[keep], ties=ties)
    torch.testing.assert_close(loss(beta, mask), deleted(beta, torch.ones(int(keep.sum()), dtype=torch.float64)))
    derivative = grad(lambda m: loss(beta, m))(mask)  # the IF differentiates in the mask: never NaN
    assert torch.isfinite(derivative).all()


def test_breslow_weight_two_equals_duplicated_patient():
    x, time, event, _ = _tied_data()
    beta = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    weights = torch.ones(len(time), dtype=torch.float64)
    weights[4] = 2.0
    rows = np.r_[np.arange(len(time)), 4]
    doubled = cox.objective(x[rows], time[rows], event[rows])
    torch.testing.assert_close(cox.objective(x, time, event)(beta, weights),
                               doubled(beta, torch.ones(len(rows), dtype=torch.float64)))


@pytest.mark.parametrize("ties", cox.TIES)
def test_fit_with_mask_equals_fit_on_deleted_data(ties):
    x, time, event, last = _tied_data(n=80)
    mask = torch.ones(len(time), dtype=torch.float64)
    mask[[last, 3]] = 0.0
    keep = mask.numpy() == 1
    full = cox.fit(x, time, event, ties=ties)
    warm = cox.fit(x, time, event, ties=ties, mask=mask, init=full)
    torch.testing.assert_close(warm, cox.fit(x[keep], time[keep], event[keep], ties=ties), rtol=1e-8, atol=1e-10)


def test_efron_fit_matches_lifelines_on_rossi():
    frame, x, time, event = _rossi()
    reference = CoxPHFitter().fit(frame, "week", "arrest", fit_options={"precision": 1e-12}).params_.to_numpy()
    beta = cox.fit(x, time, event, ties="efron").numpy()
    np.testing.assert_allclose(beta, reference, rtol=1e-6)


def test_efron_fit_matches_lifelines_on_support():
    from vif.datasets.survival import load_support

    data = load_support()
    frame = data.frame
    reference = CoxPHFitter().fit(frame, "time", "event", fit_options={"precision": 1e-12}).params_
    beta = cox.fit(frame[data.covariates], frame["time"], frame["event"], ties="efron").numpy()
    np.testing.assert_allclose(beta, reference[data.covariates].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("ties", cox.TIES)
@pytest.mark.parametrize("method", ["vif", "if"])
def test_influence_tracks_exact_leave_one_out_on_rossi(ties, method):
    _, x, time, event = _rossi()
    loss = cox.objective(x, time, event, ties=ties)
    beta = cox.fit(x, time, event, ties=ties)
    units = torch.arange(0, len(time), 9)
    predicted = vif.parameter_influence(loss, beta, n_units=len(time), method=method, units=units)

    def refit(mask, init):
        return cox.fit(x, time, event, ties=ties, mask=mask, init=init)

    actual = vif.leave_one_out(refit, beta, lambda b: b, n_units=len(time), units=units, progress=False)
    assert vif.metrics.correlations(predicted, actual).pearson > 0.999
    assert float(torch.linalg.norm(predicted - actual) / torch.linalg.norm(actual)) < 0.08  # first order: a few % off


def test_lifelines_delta_beta_is_repaired_to_match_leave_one_out():
    from vif.experiments import cox as cox_experiment

    problem = cox_experiment.setup("rotterdam", quick=True)
    problem.units = problem.units[:60]
    estimate = cox_experiment.lifelines_delta_beta(problem)
    actual = cox_experiment.exact_loo(problem)
    assert estimate.shape == actual.shape == (60, len(problem.data.rows_test) + 1)
    assert vif.metrics.correlations(estimate[:, :-1], actual[:, :-1]).pearson > 0.99


def test_adam_approaches_the_exact_fit_and_respects_the_mask():
    from vif.fit import adam

    _, x, time, event = _rossi()
    x = (x - x.mean(0)) / x.std(0)
    loss = cox.objective(x, time, event, ties="efron")
    events = torch.as_tensor(event, dtype=torch.float64)

    def mean_loss(beta, mask):  # the paper's loss: mean over the events kept
        return loss(beta, mask) / (mask * events).sum()

    mask = torch.ones(2, len(time), dtype=torch.float64)
    mask[1, 0] = 0.0
    fitted = adam(mean_loss, torch.zeros(x.shape[1], dtype=torch.float64), mask, epochs=3000)
    torch.testing.assert_close(fitted[0], cox.fit(x, time, event, ties="efron"), atol=1e-3, rtol=0)
    torch.testing.assert_close(fitted[1], cox.fit(x, time, event, ties="efron", mask=mask[1]), atol=1e-3, rtol=0)


def test_targets():
    _, x, time, event = _rossi()
    beta = cox.fit(x, time, event, ties="efron")
    torch.testing.assert_close(cox.relative_hazard(x[:5])(beta), torch.exp(torch.as_tensor(x[:5]) @ beta))
    loglik = cox.log_partial_likelihood(x, time, event, ties="efron")(beta)
    reference = CoxPHFitter().fit(load_rossi(), "week", "arrest").log_likelihood_
    assert abs(float(loglik) - reference) < 1e-6 * abs(reference)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time": np.r_[-1.0, np.ones(3)]}, "1 negative entries \\(the first -1\\)"),
        ({"event": np.zeros(4)}, "at least one observed event"),
        ({"event": np.r_[2.0, np.ones(3)]}, "0 \\(censored\\) or 1"),
        ({"X": np.c_[np.r_[np.nan, np.ones(3)], np.ones(4)]}, "NaN or infinite"),
        ({"time": np.ones(3)}, "shape \\(4,\\)"),
        ({"ties": "exact"}, "ties must be one of"),
        ({"l2": -1.0}, "l2 \\(the L2 penalty\\) must be a finite number >= 0, got -1.0"),
        ({"l2": float("nan")}, "l2 \\(the L2 penalty\\) must be a finite number >= 0, got nan"),
        ({"l2": float("inf")}, "must be a finite number >= 0, got inf"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    arguments = {"X": np.arange(8.0).reshape(4, 2), "time": np.arange(1.0, 5.0), "event": np.ones(4)}
    arguments.update(kwargs)
    with pytest.raises(InputError, match=match):
        cox.objective(arguments.pop("X"), arguments.pop("time"), arguments.pop("event"), **arguments)


def test_wrong_mask_shape_raises():
    loss = cox.objective(np.arange(8.0).reshape(4, 2), np.arange(1.0, 5.0), np.ones(4))
    with pytest.raises(MaskError, match="shape"):
        loss(torch.zeros(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))


def test_separated_data_does_not_converge_without_l2():
    time = np.arange(1.0, 9.0)
    x = -time[:, None]  # a covariate that orders the events perfectly: the maximiser is at infinity
    with pytest.raises(ConvergenceError):
        cox.fit(x, time, np.ones(8), max_iter=20)
    beta = cox.fit(x, time, np.ones(8), l2=1.0)
    assert torch.isfinite(beta).all()


def test_l2_is_on_the_summed_objective():
    frame = pd.DataFrame({"x": [0.5, -1.0, 2.0, 0.1], "t": [1.0, 2.0, 3.0, 4.0], "e": [1, 1, 0, 1]})
    loss = cox.objective(frame[["x"]], frame["t"], frame["e"], l2=3.0)
    plain = cox.objective(frame[["x"]], frame["t"], frame["e"])
    beta, ones = torch.tensor([0.7], dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(loss(beta, ones) - plain(beta, ones), torch.tensor(1.5 * 0.49, dtype=torch.float64))


@pytest.mark.parametrize("ties", cox.TIES)
def test_zero_follow_up_times_are_accepted_and_match_lifelines(ties):
    """Only the order of the times enters the partial likelihood: a time of 0 is at risk at every event."""
    frame = load_rossi()
    frame.loc[frame.index[:12], "week"] = 0.0  # tied zeros, some with events
    frame.loc[frame.index[:3], "arrest"] = 1
    x = frame.drop(columns=["week", "arrest"]).to_numpy(float)
    reference = CoxPHFitter().fit(frame, "week", "arrest", fit_options={"precision": 1e-12})
    beta = cox.fit(x, frame["week"], frame["arrest"], ties=ties)
    if ties == "efron":  # lifelines fits Efron's ties
        np.testing.assert_allclose(beta.numpy(), reference.params_.to_numpy(), rtol=1e-6)
        loglik = cox.log_partial_likelihood(x, frame["week"], frame["arrest"], ties="efron")(beta)
        assert abs(float(loglik) - reference.log_likelihood_) < 1e-8 * abs(reference.log_likelihood_)
    else:  # Breslow: the zeros form one tie group, so shifting every time by 1 changes nothing
        torch.testing.assert_close(beta, cox.fit(x, frame["week"] + 1.0, frame["arrest"], ties="breslow"))


def test_survival_fields_of_a_structured_array_are_accepted():
    """scikit-survival's ``y`` is a structured array; its fields are strided views torch cannot wrap directly."""
    frame, x, time, event = _rossi()
    y = np.empty(len(time), dtype=[("event", bool), ("time", np.float64)])
    y["event"], y["time"] = event.astype(bool), time
    records = np.empty(len(time), dtype=[("x", np.float64, (x.shape[1],)), ("pad", np.int8)])
    records["x"] = x
    beta = cox.fit(records["x"], y["time"], y["event"], ties="efron")
    torch.testing.assert_close(beta, cox.fit(x, time, event, ties="efron"), rtol=0, atol=0)
