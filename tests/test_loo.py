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
    _calls, _interrupted = [], []  # private names: bookkeeping, not part of the cache key

    def failing_fit(mask, init=None):
        unit = int((mask == 0).nonzero())
        _calls.append(unit)
        if unit == 7 and not _interrupted:
            _interrupted.append(unit)
            raise Interrupted  # the first run is _interrupted at unit 7
        return fit(mask, init)

    with pytest.raises(vif.errors.RefitError, match="without unit 7 failed"):
        vif.leave_one_out(failing_fit, BETA, target, n_units=N, cache_dir=tmp_path, progress=False,
                          objective=objective)
    assert _calls == list(range(8))
    _calls.clear()
    resumed = vif.leave_one_out(failing_fit, BETA, target, n_units=N, cache_dir=tmp_path, progress=False,
                                objective=objective)
    assert _calls == list(range(7, N))  # units 0-6 came from the cache
    assert torch.allclose(resumed, _by_hand(), atol=1e-12)
    _calls.clear()
    again = vif.leave_one_out(failing_fit, BETA, target, n_units=N, cache_dir=tmp_path, progress=False,
                              objective=objective)
    assert _calls == [] and torch.equal(again, resumed)
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


# ---- issue 11: a cache that never returns another problem's refits, survives damage and concurrency ---------


PERMUTED = torch.randperm(N, generator=torch.Generator().manual_seed(1))
X2, Y2 = X[PERMUTED], Y[PERMUTED]  # the same rows in another order: the same minimiser, other units


def fit2(mask, init=None):
    return torch.linalg.solve(X2.T @ (mask[:, None] * X2) + torch.eye(3, dtype=X.dtype), X2.T @ (mask * Y2))


def objective2(beta, mask):
    return 0.5 * (mask * (Y2 - X2 @ beta).square()).sum() + 0.5 * beta.square().sum()


def test_a_different_dataset_with_the_same_theta_hat_never_shares_cache_entries(tmp_path):
    first = vif.leave_one_out(lambda m, i: fit(m), BETA, target, n_units=N, cache_dir=tmp_path, objective=objective,
                              progress=False)
    second = vif.leave_one_out(lambda m, i: fit2(m), BETA, target, n_units=N, cache_dir=tmp_path,
                               objective=objective2, progress=False)
    assert torch.allclose(first, _by_hand(), atol=1e-12)
    assert torch.allclose(second, _by_hand()[PERMUTED], atol=1e-12) and not torch.allclose(first, second)
    with pytest.raises(vif.errors.InputError, match="cannot tell datasets apart"):
        vif.leave_one_out(lambda m, i: fit2(m), BETA, target, n_units=N, cache_dir=tmp_path, progress=False)


def test_corrupt_truncated_and_foreign_entries_are_named_and_recomputed(tmp_path):
    options = dict(n_units=N, cache_dir=tmp_path, objective=objective, progress=False)
    vif.leave_one_out(fit, BETA, target, **options)
    folder = next(tmp_path.glob("loo-*"))
    (folder / "unit-000001.pt").write_bytes(b"not a torch file")
    data = (folder / "unit-000002.pt").read_bytes()
    (folder / "unit-000002.pt").write_bytes(data[: len(data) // 2])
    (folder / "unit-000003.pt").write_bytes((folder / "unit-000004.pt").read_bytes())  # unit 4's refit
    torch.save({"theta": torch.zeros(5, dtype=torch.float64), "meta": {"units": [5]}}, folder / "unit-000005.pt")
    with pytest.warns(vif.errors.CacheWarning) as caught:
        again = vif.leave_one_out(fit, BETA, target, **options)
    named = " ".join(str(warning.message) for warning in caught)
    assert all(f"unit-00000{unit}.pt" in named for unit in (1, 2, 3, 5))
    assert torch.allclose(again, _by_hand(), atol=1e-12)


WRITER = """
import sys, torch, vif
sys.path.insert(0, {tests!r})
from test_loo import BETA, N, fit, objective, target
changes = vif.leave_one_out(fit, BETA, target, n_units=N, cache_dir={cache!r}, objective=objective, progress=False)
torch.save(changes, {out!r})
"""


def test_two_processes_writing_one_cache_folder_at_once(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    tests = str(Path(__file__).parent)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER.format(tests=tests, cache=str(tmp_path / "cache"),
                                                                     out=str(tmp_path / f"{k}.pt"))],
                                env=environment, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    for k in range(2):
        assert torch.allclose(torch.load(tmp_path / f"{k}.pt"), _by_hand(), atol=1e-12)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_a_failed_refit_names_the_unit_keeps_the_finished_ones_and_can_be_skipped(tmp_path):
    def fragile(mask, init=None):
        if mask[4] == 0:
            raise vif.errors.ConvergenceError("diverged")
        return fit(mask)

    options = dict(n_units=N, cache_dir=tmp_path, objective=objective, progress=False)
    with pytest.raises(vif.errors.RefitError, match="without unit 4 failed.*diverged"):
        vif.leave_one_out(fragile, BETA, target, **options)
    assert len(list(tmp_path.glob("loo-*/unit-*.pt"))) == 4  # units 0-3 stay cached
    with pytest.warns(vif.errors.RefitWarning, match=r"\[4\]: ConvergenceError: diverged"):
        changes, failed = vif.leave_one_out(fragile, BETA, target, on_error="skip", **options)
    assert failed.tolist() == [unit == 4 for unit in range(N)]
    assert torch.isnan(changes[4]).all() and torch.allclose(changes[~failed], _by_hand()[~failed], atol=1e-12)
    with pytest.raises(vif.errors.InputError, match="on_error"):
        vif.leave_one_out(fit, BETA, target, on_error="ignore", **options)


def test_a_fit_with_a_nested_function_keeps_its_cache_identity_across_processes(tmp_path):
    """The code hash once included a nested code object's repr (a memory address): every new process, e.g.
    every book build, got a new cache folder and recomputed every refit."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "fit_module.py").write_text(textwrap.dedent('''
        def fit(mask, init):
            def inner(value):
                return value + 1
            return inner(init)
    '''))
    script = "import fit_module; from vif._loo_cache import fit_identity; print(fit_identity(fit_module.fit)['code'])"
    digests = {subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    assert len(digests) == 1 and "" not in digests, digests
    (tmp_path / "fit_module.py").write_text((tmp_path / "fit_module.py").read_text().replace("+ 1", "+ 2"))
    changed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert changed not in digests, "a change of the nested code must change the identity"
