"""Neural Cox scaling: VIF, IF and warm LOO seconds for n = 1,000 .. 20,000 patients at the largest width.

Usage: ``python benchmarks/neural_cox_scaling.py [--full] [--sizes 1000 2000] [--hidden 64 64] [--device cuda]``

Data: synthetic SUPPORT-like patients (seeded): 14 covariates (9 standard-normal "physiology" values and 5
binary indicators, like DeepSurv's SUPPORT covariates), log-hazard a smooth nonlinear function of them,
exponential event times rounded up to whole days (so times tie, as in SUPPORT) and uniform censoring
(about 30%). Model: :class:`vif.tasks.neural_cox.NeuralCox` (tanh MLP, Efron ties, weight decay 10) fitted
by L-BFGS to ``max|grad| <= --gtol`` (a timing benchmark: the chapter's fits are tighter). VIF and IF use the
Gauss-Newton Hessian by CG (no dense Hessian at this width), for all patients, on ``--targets`` log-hazards.
Warm LOO is timed on ``--loo-units`` refits and extrapolated to all patients. Everything runs where the
parameters live (``--device``; default CUDA when available). The default run (n = 1,000, 64 x 64 hidden units,
5,184 parameters) takes under 3 minutes on one CPU thread; ``--full`` runs the largest width (128 x 128, 18,560
parameters) at n = 1,000, 2,000, 5,000, 10,000 and 20,000 (hours on a CPU; minutes on a GPU).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import vif
from vif.solvers import CG
from vif.tasks.neural_cox import NeuralCox


def synthetic_support(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded SUPPORT-like data: covariates ``(n, 14)``, integer-day times ``(n,)``, events ``(n,)``."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, 9)), (rng.random((n, 5)) < 0.3).astype(float)], axis=1)
    risk = 0.6 * np.tanh(x[:, 0] + 0.5 * x[:, 1]) - 0.4 * x[:, 2] ** 2 / 2 + 0.5 * x[:, 9] + 0.3 * x[:, 3] * x[:, 4]
    event_time = rng.exponential(200.0 * np.exp(-risk))
    censor_time = rng.uniform(0, 900.0, size=n)
    time_ = np.ceil(np.minimum(event_time, censor_time)) + 1.0
    return x, time_, (event_time <= censor_time).astype(float)


def _timed(function, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def scaling(n: int, hidden: tuple[int, ...], *, targets: int, loo_units: int, gtol: float, device: str) -> dict:
    """Fit, VIF, IF and timed warm refits at ``n`` patients; seconds and ratios."""
    x, time_, event = synthetic_support(n + targets)
    task = NeuralCox(torch.as_tensor(x[:n], device=device), time_[:n], event[:n], hidden=hidden, weight_decay=10.0,
                     gtol=gtol, device=device)
    x_test = torch.as_tensor(x[n:], device=device)
    params, fit_seconds = _timed(task.fit)

    def target(p: dict) -> torch.Tensor:
        return task.risk(p, x_test)

    hessian = CG(operator=task.gauss_newton(params), tol=1e-6)
    _, vif_seconds = _timed(vif.influence, task, params, target, hessian=hessian)
    _, if_seconds = _timed(vif.influence, task, params, target, hessian=hessian, method="if")
    _, loo_seconds = _timed(vif.leave_one_out, task, params, target, units=range(loo_units), progress=False)
    loo_all = loo_seconds / loo_units * n
    return {"n": n, "n_params": task.n_params, "device": str(task.data.x.device), "fit": fit_seconds, "vif": vif_seconds,
            "if": if_seconds, "loo_all_extrapolated": loo_all, "loo_over_vif": loo_all / vif_seconds,
            "loo_over_if": loo_all / if_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--full", action="store_true", help="n = 1,000 .. 20,000 (long on a CPU)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths (default 64 64; --full 128 128)")
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--loo-units", type=int, default=2, help="warm refits timed per size (extrapolated)")
    parser.add_argument("--gtol", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([1000, 2000, 5000, 10000, 20000] if args.full else [1000])
    hidden = tuple(args.hidden or ([128, 128] if args.full else [64, 64]))
    print(f"{'n':>6} {'params':>7} {'fit s':>8} {'VIF s':>8} {'IF s':>8} {'LOO s':>10} {'LOO/VIF':>8} {'LOO/IF':>8}  device")
    rows = []
    for n in sizes:
        row = scaling(n, hidden, targets=args.targets, loo_units=args.loo_units, gtol=args.gtol, device=args.device)
        rows.append(row)
        print(f"{n:>6} {row['n_params']:>7} {row['fit']:>8.1f} {row['vif']:>8.2f} {row['if']:>8.2f} "
              f"{row['loo_all_extrapolated']:>10.0f} {row['loo_over_vif']:>8.1f} {row['loo_over_if']:>8.1f}  {row['device']}",
              flush=True)
    print(f"LOO s: warm L-BFGS refits to max|grad| <= {args.gtol:g}, timed on {args.loo_units} per size, extrapolated")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
