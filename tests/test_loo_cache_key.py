"""Issue 21, class 4: the cache key hashes the data and every fit setting, never only objective values.

The old key fingerprinted the data by the objective's values under three fixed random masks and reduced
closure contents to type names: two swapped rows, a task's gtol or a config value the fit reads all came back
with the old refits.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import torch

import vif

N, D = 12, 3
GENERATOR = torch.Generator().manual_seed(5)
X = torch.randn(N, D, generator=GENERATOR, dtype=torch.float64)
Y = torch.randn(N, generator=GENERATOR, dtype=torch.float64)


def ridge_objective(features, response):
    def objective(beta, mask):
        return 0.5 * (mask * (response - features @ beta).square()).sum() + 0.5 * beta.square().sum()
    return objective


def by_hand(features, response, beta_hat):
    """Exact changes of ``beta.sum()`` deleting each row (independent of the harness)."""
    rows = []
    for unit in range(N):
        keep = torch.arange(N) != unit
        beta = torch.linalg.solve(features[keep].T @ features[keep] + torch.eye(D, dtype=X.dtype),
                                  features[keep].T @ response[keep])
        rows.append(beta.sum() - beta_hat.sum())
    return torch.stack(rows)


@dataclass
class FitConfig:
    max_iter: int = 50


@dataclass
class Ridge:
    """A task that holds its data, its gtol and a nested config its fit reads."""

    X: torch.Tensor
    Y: torch.Tensor
    gtol: float = 1e-10
    config: FitConfig = field(default_factory=FitConfig)

    @property
    def n_units(self):
        return N

    def objective(self, beta, mask):
        return ridge_objective(self.X, self.Y)(beta, mask)

    def fit(self, mask=None, init=None):
        mask = torch.ones(N, dtype=X.dtype) if mask is None else mask
        start = torch.zeros(D, dtype=X.dtype) if init is None else init
        self._last_mask = mask  # a private attribute: bookkeeping, not part of the key
        return vif.fit.newton(self.objective, start, mask, gtol=self.gtol, max_iter=self.config.max_iter)


def twin_rows():
    """Two rows that every mask of the old fingerprint keeps or drops together: swapping them fooled it."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    masks = torch.stack([torch.rand(N, generator=generator) < 0.5 for _ in range(3)])
    for i in range(N):
        for j in range(i + 1, N):
            if torch.equal(masks[:, i], masks[:, j]):
                return i, j
    raise AssertionError("no twin rows")


def swapped(tensor, i, j):
    out = tensor.clone()
    out[[i, j]] = tensor[[j, i]]
    return out


BETA = Ridge(X, Y).fit()


def target(beta):
    return beta.sum()


def test_swapping_two_rows_of_the_tasks_data_gives_a_new_folder_and_the_right_refits(tmp_path):
    i, j = twin_rows()
    first = vif.leave_one_out(Ridge(X, Y), BETA, target, cache_dir=tmp_path, progress=False)
    Xs, Ys = swapped(X, i, j), swapped(Y, i, j)
    second = vif.leave_one_out(Ridge(Xs, Ys), BETA, target, cache_dir=tmp_path, progress=False)
    assert torch.allclose(first, by_hand(X, Y, BETA), atol=1e-10)
    assert torch.allclose(second, by_hand(Xs, Ys, BETA), atol=1e-10)  # the old key returned `first` here
    assert len(list(tmp_path.glob("loo-*"))) == 2


def test_swapping_two_rows_inside_a_bare_closure_gives_a_new_folder(tmp_path):
    i, j = twin_rows()

    def make(features, response):
        objective = ridge_objective(features, response)

        def refit(mask, init):
            return vif.fit.newton(objective, init, mask, gtol=1e-10)
        return refit, objective

    for features, response in ((X, Y), (swapped(X, i, j), swapped(Y, i, j))):
        refit, objective = make(features, response)
        changes = vif.leave_one_out(refit, BETA, target, n_units=N, objective=objective, cache_dir=tmp_path,
                                    progress=False)
        assert torch.allclose(changes, by_hand(features, response, BETA), atol=1e-10)
    assert len(list(tmp_path.glob("loo-*"))) == 2


def test_the_tasks_gtol_and_a_value_in_a_nested_config_are_part_of_the_key(tmp_path):
    options = dict(units=[0, 1], cache_dir=tmp_path, progress=False)
    vif.leave_one_out(Ridge(X, Y), BETA, target, **options)
    vif.leave_one_out(Ridge(X, Y, gtol=1e-11), BETA, target, **options)
    vif.leave_one_out(Ridge(X, Y, config=FitConfig(max_iter=60)), BETA, target, **options)
    assert len(list(tmp_path.glob("loo-*"))) == 3


def test_a_config_read_by_a_bare_closure_is_part_of_the_key(tmp_path):
    objective = ridge_objective(X, Y)

    def make(settings):
        def refit(mask, init):
            return vif.fit.newton(objective, init, mask, gtol=settings["gtol"])
        return refit

    for gtol in (1e-10, 1e-12):
        vif.leave_one_out(make({"gtol": gtol}), BETA, target, n_units=N, units=[0], objective=objective,
                          cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("loo-*"))) == 2


def test_equal_data_in_fresh_objects_and_private_bookkeeping_keep_one_folder(tmp_path):
    calls = []

    class Counting(Ridge):
        def fit(self, mask=None, init=None):
            calls.append(1)
            return super().fit(mask, init)

    options = dict(units=[0, 1, 2], cache_dir=tmp_path, progress=False)
    first = vif.leave_one_out(Counting(X.clone(), Y.clone()), BETA, target, **options)
    calls.clear()
    again = vif.leave_one_out(Counting(X.clone(), Y.clone()), BETA, target, **options)
    assert calls == [] and torch.equal(first, again)
    assert len(list(tmp_path.glob("loo-*"))) == 1


FIT_MODULE = '''
import torch
SCALE = torch.arange(4.0)

def fit(mask, init, mode="a"):
    if mode in {"a", "b", "c", "d", "e", "f", "g"}:
        return init * SCALE.sum()
    return init
'''


def test_the_key_is_the_same_in_every_process_whatever_the_string_hash_seed(tmp_path):
    """A set constant's repr follows the string hash seed: the old code digest changed from process to process."""
    import os

    (tmp_path / "fit_module.py").write_text(textwrap.dedent(FIT_MODULE))
    script = "import fit_module; from vif._loo_cache import fit_identity; print(fit_identity(fit_module.fit))"
    legacy = ("import fit_module; from vif.loo import _fit_identity as f; print(f(fit_module.fit))")
    outputs = set()
    for seed in range(4):
        environment = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": os.pathsep.join(sys.path)}
        run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             env=environment)
        if run.returncode:  # the code before issue 21 (kept so the test can be run against it)
            run = subprocess.run([sys.executable, "-c", legacy], cwd=tmp_path, capture_output=True, text=True,
                                 env=environment, check=True)
        outputs.add(run.stdout.strip())
    assert len(outputs) == 1, outputs
    (tmp_path / "fit_module.py").write_text(textwrap.dedent(FIT_MODULE).replace("arange(4.0)", "arange(5.0)"))
    changed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True).stdout.strip()
    assert changed not in outputs, "data in a global the fit reads must change the identity"


KEYS_OF_EVERY_TASK = '''
import sys, torch, vif
sys.path.insert(0, {tests!r})
from test_architecture import _small_data, _task_instances
from vif._loo_cache import data_digest
for cls, build in _task_instances().items():
    task = build(_small_data())
    before = data_digest(task.fit), data_digest(task.objective)
    params = task.fit()
    mask = torch.ones(task.n_units, dtype=vif.params.flatten(params)[0].dtype)
    mask[1] = 0.0
    task.fit(mask, params)  # fills lazily built caches (a factorised Hessian): they must not change the key
    assert (data_digest(task.fit), data_digest(task.objective)) == before, cls.__qualname__
    print(cls.__qualname__, *before)
'''


def test_every_tasks_key_is_the_same_in_every_process_and_after_its_fits(tmp_path):
    """The chapters' caches are found again by the next book build: no random or lazily filled state in the key
    (an encoder's unseeded template weights, a warm-start Hessian cache, the string hash seed)."""
    import os
    from pathlib import Path

    script = KEYS_OF_EVERY_TASK.format(tests=str(Path(__file__).parent))
    outputs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed),
                                   "PYTHONPATH": os.pathsep.join(sys.path)}).stdout for seed in (1, 2)]
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) >= 7, outputs
