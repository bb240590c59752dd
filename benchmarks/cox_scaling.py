"""Cox scaling: VIF (closed form and the autodiff engine), IF, warm Newton LOO and lifelines over n, one core.

Usage: ``python benchmarks/cox_scaling.py [--full] [--sizes ...] [--ties breslow efron] [--if-reruns 5]``

Data: synthetic, SUPPORT-like (14 covariates: 10 Gaussian, 4 binary; survival and censoring times in whole
days, 1..900, about 68% events, so times tie as in SUPPORT). Every method runs in a **fresh process** and
reports its seconds (after the fit, which is shared and not timed) and that process's peak resident memory.
Targets: relative hazards of 200 held-out patients. Every method covers all n training patients:

* ``vif``: :func:`vif.influence` with the task (closed-form masked-gradient differences over event groups).
* ``vif_autodiff``: the same with the bare objective (vmapped autodiff, the reference and the old engine),
  timed on ``--autodiff-units`` units and scaled to n (its cost per unit is constant for a given n).
* ``if``: ``method="if"``. ``loo``: warm-started Newton refits timed on ``--loo-units`` units (after one
  untimed warm-up refit), scaled to n.
* ``lifelines``: ``CoxPHFitter`` fit plus ``delta_beta`` residuals (Efron only; skipped above
  ``--lifelines-max``, where it takes minutes).

The default (n = 1,000 .. 20,000) takes a few minutes; ``--full`` runs n = 1,000 .. 100,000.
The fitted exponent is the slope of log seconds on log n.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

METHODS = ("vif", "vif_autodiff", "if", "loo", "lifelines")
DEFAULT_SIZES = (1000, 5000, 20000)
FULL_SIZES = (1000, 5000, 20000, 50000, 100000)


def support_like(n: int, seed: int = 0, n_test: int = 200) -> tuple[np.ndarray, ...]:
    """``(x, time, event, x_test)``: ``x`` ``(n, 14)``; times in whole days 1..900; ~68% events."""
    rng = np.random.default_rng(seed)
    total = n + n_test
    x = np.concatenate([rng.normal(size=(total, 10)), (rng.random((total, 4)) < 0.3).astype(float)], 1)
    beta = np.linspace(-0.4, 0.4, 14)
    survival = np.ceil(rng.exponential(400.0 * np.exp(-x @ beta)))
    censoring = np.ceil(rng.uniform(1.0, 900.0, size=total))
    time_ = np.clip(np.minimum(survival, censoring), 1, 2029)
    event = (survival <= censoring).astype(float)
    return x[:n], time_[:n], event[:n], x[n:]


def _worker(method: str, n: int, ties: str, options: dict) -> dict:
    import torch

    import vif
    from vif.tasks import cox

    torch.set_num_threads(1)
    x, time_, event, x_test = support_like(n)
    task = cox.CoxRegression(x, time_, event, ties=ties, l2=1.0)
    beta = task.fit()
    target = cox.relative_hazard(x_test)
    start, scale = time.perf_counter(), 1.0
    if method == "vif":
        vif.influence(task, beta, target)
    elif method == "vif_autodiff":
        units = min(n, options["autodiff_units"])
        vif.influence(task.objective, beta, target, n_units=n, units=range(units))
        scale = n / units
    elif method == "if":
        vif.influence(task, beta, target, method="if")
    elif method == "loo":
        units = options["loo_units"]
        vif.leave_one_out(task, beta, target, units=[n - 1], warm_start=True)  # warm-up, not timed
        start = time.perf_counter()
        vif.leave_one_out(task, beta, target, units=range(units), warm_start=True)
        scale = n / units
    elif method == "lifelines":
        import warnings

        import pandas as pd
        from lifelines import CoxPHFitter

        frame = pd.DataFrame(x, columns=[f"x{k}" for k in range(x.shape[1])]).assign(time=time_, event=event)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = CoxPHFitter(penalizer=0.0).fit(frame, "time", "event")
            fitted.compute_residuals(frame, "delta_beta")
    seconds = (time.perf_counter() - start) * scale
    return {"method": method, "n": n, "ties": ties, "seconds": seconds, "scaled_by": scale,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _fresh(method: str, n: int, ties: str, options: dict) -> dict:
    command = [sys.executable, __file__, "--worker", method, str(n), ties, json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def _exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]) if len(sizes) > 1 else float("nan")


def _cell(row: dict, method: str) -> str:
    result = row[method]
    return "skipped" if result is None else f"{result['seconds']:.3g} ({result['peak_gb']:.2f})"


def _ratio(row: dict, method: str) -> str:
    return "-" if row[method] is None or row["vif"] is None else f"{row[method]['seconds'] / row['vif']['seconds']:.0f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="n = 1,000 .. 100,000")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--ties", nargs="+", default=["breslow", "efron"])
    parser.add_argument("--autodiff-units", type=int, default=256)
    parser.add_argument("--loo-units", type=int, default=5)
    parser.add_argument("--lifelines-max", type=int, default=20000)
    parser.add_argument("--autodiff-max", type=int, default=20000)
    parser.add_argument("--if-reruns", type=int, default=5, help="fresh IF processes at the largest n <= 20,000")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, n, ties, options = args.worker
        print(json.dumps(_worker(method, int(n), ties, json.loads(options))))
        return
    sizes = args.sizes or (FULL_SIZES if args.full else DEFAULT_SIZES)
    options = {"autodiff_units": args.autodiff_units, "loo_units": args.loo_units}
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for ties in args.ties:
        print(f"\n{ties}: seconds over all n units (peak GB of a fresh process)")
        print(f"{'n':>7} {'VIF':>14} {'VIF autodiff':>16} {'IF':>14} {'LOO (warm)':>16} {'lifelines':>14} "
              f"{'autodiff/VIF':>12} {'LOO/VIF':>9}")
        for n in sizes:
            row = {"n": n, "ties": ties}
            for method in METHODS:
                skip = (method not in args.methods or (method == "lifelines" and (ties != "efron" or n > args.lifelines_max))
                        or (method == "vif_autodiff" and n > args.autodiff_max))
                row[method] = None if skip else _fresh(method, n, ties, options)
            rows.append(row)
            print(f"{n:>7} {_cell(row, 'vif'):>14} {_cell(row, 'vif_autodiff'):>16} {_cell(row, 'if'):>14} "
                  f"{_cell(row, 'loo'):>16} {_cell(row, 'lifelines'):>14} {_ratio(row, 'vif_autodiff'):>12} "
                  f"{_ratio(row, 'loo'):>9}", flush=True)
        for method in ("vif", "if", "loo"):
            if method not in args.methods:
                continue
            done = [r for r in rows if r["ties"] == ties and r[method] is not None]
            print(f"  scaling exponent of {method}: "
                  f"{_exponent([r['n'] for r in done], [r[method]['seconds'] for r in done]):.2f}")
    print("VIF autodiff: timed on", args.autodiff_units, "units and scaled; LOO: warm Newton timed on",
          args.loo_units, "refits and scaled; lifelines skipped above n =", args.lifelines_max, "and for Breslow.")
    reruns = [n for n in sizes if n <= 20000]
    if args.if_reruns and reruns and "if" in args.methods:
        n = max(reruns)
        results = [_fresh("if", n, args.ties[0], options) for _ in range(args.if_reruns)]
        peaks, seconds = [r["peak_gb"] for r in results], [r["seconds"] for r in results]
        print(f"\nIF at n = {n} ({args.ties[0]}), {args.if_reruns} fresh processes: seconds "
              f"{min(seconds):.3f}..{max(seconds):.3f}, peak GB {min(peaks):.3f}..{max(peaks):.3f} "
              f"(spread {100 * (max(peaks) - min(peaks)) / min(peaks):.1f}%)")
        rows.append({"if_reruns": results})
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
