"""VIF side by side with the field's direct influence functions on L2-regularised logistic regression.

Usage: ``PYTHONPATH=src:/path/to/dattri python benchmarks/peers.py [--n 20000] [--features 100] [--targets 500]``

Problem: ``n`` training points, ``features`` Gaussian features plus a bias (``features + 1`` parameters), labels
from a noisy logistic model; ``L(theta, m) = sum_i m_i l_i(theta) + (l2 / 2) ||theta||^2`` (the bias is penalised
too, so every library sees the same Hessian), fitted by Newton. Targets: the log-losses of ``targets`` test points.

Conventions, stated once and checked to 1e-8 before anything is timed:

* vif: ``influence[i, t] ~= f_t(theta_without_i) - f_t(theta_hat) = grad f_t^T H^-1 grad l_i`` with ``H`` the
  Hessian of the **summed** objective (the penalty included). The objective is linear in the mask, so VIF
  takes the IF Jacobian route (:meth:`vif.problem.Problem.route`) and equals the IF exactly.
* dattri 0.3.0 ``IFAttributorExplicit``: ``score[i, t] = grad l_i^T (H_loss + regularization I)^-1 grad f_t``,
  with ``H_loss`` the Hessian of ``loss_func`` on the cached full-data batch. With a summed ``loss_func`` and
  ``regularization = l2`` that is exactly vif's ``H``: sign +1, scale 1. dattri allocates its score matrix in
  torch's default dtype (float32: agreement only to ~3e-8), so it runs with the default dtype set to float64.
  One batch holds all training points (dattri sums ``H_b^-1 v`` over the batches of the cached loader).
* pydvl (``DirectInfluence``) needs numpy < 2; it is skipped with a message in this environment.

Optional dependencies: ``pip install .[bench]`` (dattri 0.3.0); the benchmark skips a missing library with a message.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import ClassVar

import torch
import torch.nn.functional as F

import vif
from vif.fit import newton


class PenalisedLogistic:
    """Logistic regression task with the penalty on all parameters; ``theta = [w (features,), b]``."""

    mask_linear: ClassVar[bool] = True

    def __init__(self, X: torch.Tensor, y: torch.Tensor, l2: float) -> None:
        self.X, self.y, self.l2 = X, y, l2
        self.n_units = int(X.shape[0])

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example log-loss ``(n,)``."""
        return F.softplus(-(2.0 * y - 1.0) * (X @ theta[:-1] + theta[-1]))

    def objective(self, theta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked summed log-loss plus ``(l2 / 2) ||theta||^2``."""
        return (mask * self.losses(theta, self.X, self.y)).sum() + 0.5 * self.l2 * theta.square().sum()

    def fit(self, mask: torch.Tensor | None = None, init: torch.Tensor | None = None) -> torch.Tensor:
        """Newton to ``max|grad| <= 1e-10``."""
        mask = self.X.new_ones(self.n_units) if mask is None else mask
        start = self.X.new_zeros(self.X.shape[1] + 1) if init is None else init
        return newton(self.objective, start, mask, gtol=1e-10)


class NotLinear(PenalisedLogistic):
    """The same task without the declaration: VIF by vmapped autodiff (the engine before the mask-linear route)."""

    mask_linear: ClassVar[bool] = False


def problem(n: int, features: int, targets: int, seed: int = 0) -> tuple[PenalisedLogistic, torch.Tensor, torch.Tensor]:
    """``(task, X_test (targets, features), y_test (targets,))``, float64, seeded."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n + targets, features, generator=generator, dtype=torch.float64)
    w = torch.randn(features, generator=generator, dtype=torch.float64) / features**0.5
    p = torch.sigmoid(X @ w + 0.3)
    y = (torch.rand(n + targets, generator=generator, dtype=torch.float64) < p).to(torch.float64)
    return PenalisedLogistic(X[:n], y[:n], l2=1.0), X[n:], y[n:]


def run_vif(task: PenalisedLogistic, theta: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor) -> torch.Tensor:
    """``(n, targets)``: vif's VIF (the mask-linear route for the declared task)."""
    return vif.influence(task, theta, lambda t: task.losses(t, X_test, y_test))


def run_dattri(task: PenalisedLogistic, theta: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor
               ) -> torch.Tensor | None:
    """``(n, targets)``: dattri's explicit-inverse IF scores, or ``None`` (with a message) if dattri is missing."""
    try:
        from dattri.algorithm.influence_function import IFAttributorExplicit
        from dattri.task import AttributionTask
    except ImportError as error:
        print(f"dattri skipped: {error} (pip install .[bench], or put dattri 0.3.0 on PYTHONPATH)")
        return None
    from torch.utils.data import DataLoader, TensorDataset

    features = task.X.shape[1]
    model = torch.nn.Linear(features, 1).double()

    def loss_func(params: dict, data: tuple) -> torch.Tensor:
        x, y = data
        logits = torch.func.functional_call(model, params, x.reshape(-1, features)).reshape(-1)
        return F.softplus(-(2.0 * y.reshape(-1) - 1.0) * logits).sum()

    checkpoint = {"weight": theta[:-1].reshape(1, -1).clone(), "bias": theta[-1:].clone()}
    attribution = AttributionTask(loss_func=loss_func, model=model, checkpoints=checkpoint)
    attributor = IFAttributorExplicit(task=attribution, regularization=task.l2)
    train = TensorDataset(task.X, task.y)
    attributor.cache(DataLoader(train, batch_size=task.n_units))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # dattri allocates its score matrix with the default dtype
    try:
        return attributor.attribute(DataLoader(train, batch_size=task.n_units),
                                    DataLoader(TensorDataset(X_test, y_test), batch_size=len(y_test))).detach()
    finally:
        torch.set_default_dtype(default)


def _timed(function, *args) -> tuple[object, float]:
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--autodiff", action="store_true", help="also time VIF without the mask-linear route")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task, X_test, y_test = problem(args.n, args.features, args.targets)
    theta = task.fit()
    print(f"n = {args.n}, parameters = {args.features + 1}, targets = {args.targets}, one torch thread; "
          f"load average {os.getloadavg()}")
    reference = run_vif(task, theta, X_test, y_test)
    dattri = run_dattri(task, theta, X_test, y_test)
    if dattri is not None:
        gap = float((reference - dattri).abs().max() / reference.abs().max())
        print(f"dattri vs vif (sign +1, scale 1): max |difference| / max |vif| = {gap:.2e}")
        assert gap < 1e-8, "the libraries disagree"
    print("pydvl skipped: it needs numpy < 2 (this environment has numpy 2); run it in a separate environment.")
    runs = {"vif (mask-linear route)": lambda: run_vif(task, theta, X_test, y_test)}
    if dattri is not None:
        runs["dattri IFAttributorExplicit"] = lambda: run_dattri(task, theta, X_test, y_test)
    if args.autodiff:
        slow = NotLinear(task.X, task.y, task.l2)
        runs["vif (vmapped autodiff VIF)"] = lambda: run_vif(slow, theta, X_test, y_test)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, function in runs.items():
            seconds[name].append(_timed(function)[1])
    print(f"{'method':<30} {'median s':>9} {'runs':>24}")
    for name, values in seconds.items():
        print(f"{name:<30} {sorted(values)[len(values) // 2]:>9.3f} {', '.join(f'{v:.3f}' for v in values):>24}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
