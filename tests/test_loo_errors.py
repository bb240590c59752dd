"""Issue 21, class 9 (leave-one-out part): cache failures, bad arguments found early, skipped refits scoreable."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import vif
from ridge_data import ridge
from vif.errors import CacheWarning, InputError, RefitWarning

N, D = 10, 3
X, Y, objective, fit = ridge(N, D, seed=7)

BETA = fit(torch.ones(N, dtype=torch.float64))


def target(beta):
    return torch.stack([beta.sum(), beta[0], beta[1] - beta[2]])


def by_hand():
    rows = []
    for unit in range(N):
        keep = torch.arange(N) != unit
        beta = torch.linalg.solve(X[keep].T @ X[keep] + torch.eye(D, dtype=X.dtype), X[keep].T @ Y[keep])
        rows.append(target(beta) - target(BETA))
    return torch.stack(rows)


def counting():
    calls = []

    def counted(mask, init):
        calls.append(int((mask == 0).nonzero()))
        return fit(mask)
    return counted, calls


def test_a_failed_cache_write_warns_and_returns_the_results(tmp_path, monkeypatch):
    def disk_full(path, theta, meta):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vif.loo, "save", disk_full, raising=False)
    monkeypatch.setattr(vif.loo, "_save", disk_full, raising=False)  # the name before issue 21
    with pytest.warns(CacheWarning, match="cannot write the cache entry .*No space left on device.*are returned"):
        changes = vif.leave_one_out(fit, BETA, target, n_units=N, objective=objective, cache_dir=tmp_path,
                                    progress=False)
    assert torch.allclose(changes, by_hand(), atol=1e-12)


def test_a_cache_dir_that_is_a_file_fails_before_any_refit(tmp_path):
    path = tmp_path / "cache"
    path.write_text("not a folder")
    counted, calls = counting()
    with pytest.raises(InputError, match="cache_dir .*cache' is a file, not a folder.*cache_dir=None"):
        vif.leave_one_out(counted, BETA, target, n_units=N, objective=objective, cache_dir=path, progress=False)
    assert calls == []


def test_a_cache_dir_that_cannot_be_written_fails_before_any_refit(tmp_path, monkeypatch):
    import vif._loo_cache

    def read_only(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(vif._loo_cache, "_atomic_write", read_only)
    counted, calls = counting()
    with pytest.raises(InputError, match="cannot be written .*Permission denied.*writable folder, or cache_dir=None"):
        vif.leave_one_out(counted, BETA, target, n_units=N, objective=objective, cache_dir=tmp_path, progress=False)
    assert calls == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_dir_fails_before_any_refit(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    counted, calls = counting()
    try:
        with pytest.raises(InputError, match="cannot be written"):
            vif.leave_one_out(counted, BETA, target, n_units=N, objective=objective, cache_dir=folder,
                              progress=False)
    finally:
        folder.chmod(0o700)
    assert calls == []


@pytest.mark.parametrize("n_jobs", [0, 1.5, True])
def test_n_jobs_zero_fails_before_any_refit(n_jobs, tmp_path):
    counted, calls = counting()
    with pytest.raises(InputError, match=r"n_jobs must be a nonzero int \(1: serial.*-1: all cores\), got"):
        vif.leave_one_out(counted, BETA, target, n_units=N, n_jobs=n_jobs, cache_dir=tmp_path, objective=objective,
                          progress=False)
    assert calls == [] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("columns", [slice(None), 0])
def test_skipped_refits_are_nan_rows_and_scoreable_with_valid(columns):
    def fragile(mask, init):
        if mask[2] == 0 or mask[6] == 0:
            raise vif.errors.ConvergenceError("diverged")
        return fit(mask)

    def chosen(beta):
        return target(beta)[columns]

    with pytest.warns(RefitWarning, match="2 refit"):
        actual, failed = vif.leave_one_out(fragile, BETA, chosen, n_units=N, on_error="skip", progress=False)
    assert failed.tolist() == [unit in (2, 6) for unit in range(N)]
    assert torch.isnan(actual[failed]).all() and torch.isfinite(actual[~failed]).all()  # NaN rows, as documented
    predicted = vif.influence(objective, BETA, chosen, n_units=N)
    result = vif.metrics.correlations(predicted, actual, valid=~failed)
    truth = by_hand()[:, columns]
    expected = vif.metrics.correlations(predicted[~failed], truth[~failed])
    assert np.allclose(result.pearson_each, expected.pearson_each, atol=1e-12)
    assert result.n_excluded == 2 * (actual.shape[1] if actual.ndim == 2 else 1)
