"""The leave-one-out harness: exact refits, resumable cache, joblib and dask parallelism."""

from __future__ import annotations

import joblib
import pytest
import torch

import vif

N = 12
GENERATOR = torch.Generator().manual_seed(0)
X = torch.randn(N, 3, generator=GENERATOR, dtype=torch.float64)
Y = torch.randn(N, generator=GENERATOR, dtype=torch.float64)


def fit(mask, init=None):
    return torch.linalg.solve(X.T @ (mask[:, None] * X) + torch.eye(3, dtype=X.dtype), X.T @ (mask * Y))


def objective(beta, mask):
    return 0.5 * (mask * (Y - X @ beta).square()).sum() + 0.5 * beta.square().sum()


BETA = fit(torch.ones(N, dtype=torch.float64))


def target(beta):
    return torch.stack([beta.sum(), beta[0]])


def _by_hand():
    rows = []
    for unit in range(N):
        keep = torch.arange(N) != unit
        beta = torch.linalg.solve(X[keep].T @ X[keep] + torch.eye(3, dtype=X.dtype), X[keep].T @ Y[keep])
        rows.append(target(beta) - target(BETA))
    return torch.stack(rows)


def test_refits_match_deleting_each_row():
    assert torch.allclose(vif.leave_one_out(fit, BETA, target, n_units=N, progress=False), _by_hand(), atol=1e-12)


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C in the middle of a LOO run."""


def test_resumes_from_the_cache_after_an_interruption(tmp_path):
    calls, interrupted = [], []

    def failing_fit(mask, init=None):
        unit = int((mask == 0).nonzero())
        calls.append(unit)
        if unit == 7 and not interrupted:
            interrupted.append(unit)
            raise Interrupted  # the first run is interrupted at unit 7
        return fit(mask, init)

    with pytest.raises(vif.errors.RefitError, match="without unit 7 failed"):
        vif.leave_one_out(failing_fit, BETA, target, n_units=N, cache_dir=tmp_path, progress=False,
                          objective=objective)
    assert calls == list(range(8))
    calls.clear()
    resumed = vif.leave_one_out(failing_fit, BETA, target, n_units=N, cache_dir=tmp_path, progress=False,
                                objective=objective)
    assert calls == list(range(7, N))  # units 0-6 came from the cache
    assert torch.allclose(resumed, _by_hand(), atol=1e-12)
    calls.clear()
    again = vif.leave_one_out(failing_fit, BETA, target, n_units=N, cache_dir=tmp_path, progress=False,
                              objective=objective)
    assert calls == [] and torch.equal(again, resumed)
    saved = torch.load(next(tmp_path.glob("loo-*/unit-000008.pt")), weights_only=True)
    assert saved["meta"]["units"] == [8] and saved["meta"]["grad_norm"] < 1e-10


def test_cache_key_separates_different_configurations(tmp_path):
    vif.leave_one_out(fit, BETA, target, n_units=N, units=[0], cache_dir=tmp_path, cache_key="a", progress=False)
    vif.leave_one_out(fit, BETA, target, n_units=N, units=[0], cache_dir=tmp_path, cache_key="b", progress=False)
    vif.leave_one_out(fit, BETA, target, n_units=N, units=[0], cache_dir=tmp_path, warm_start=False, progress=False,
                      objective=objective)
    assert len(list(tmp_path.glob("loo-*"))) == 3


def test_joblib_processes_equal_serial():
    serial = vif.leave_one_out(fit, BETA, target, n_units=N, progress=False)
    parallel = vif.leave_one_out(fit, BETA, target, n_units=N, n_jobs=2, progress=False)
    assert torch.allclose(parallel, serial, atol=1e-12)


def test_dask_local_cluster_backend_equals_serial():
    distributed = pytest.importorskip("distributed")
    serial = vif.leave_one_out(fit, BETA, target, n_units=N, units=[1, 4, 9], progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster), joblib.parallel_config(backend="dask"):
        on_dask = vif.leave_one_out(fit, BETA, target, n_units=N, units=[1, 4, 9], n_jobs=-1, progress=False)
    assert torch.allclose(on_dask, serial, atol=1e-12)


def test_mask_aware_target_and_returned_parameters():
    def coverage(beta, mask):
        return (mask * (X @ beta)).sum()

    changes, params = vif.leave_one_out(fit, BETA, coverage, n_units=N, units=[2, 5], progress=False,
                                        return_params=True)
    for row, unit in enumerate([2, 5]):
        mask = vif.params.removal_mask(N, unit, BETA)
        assert torch.allclose(params[row], fit(mask), atol=1e-12)
        assert torch.allclose(changes[row], coverage(fit(mask), mask) - coverage(BETA, mask), atol=1e-12)
