"""Cox speed table: VIF, IF, lifelines delta_beta, exact warm-started LOO and paper-protocol LOO.

Usage: ``python benchmarks/cox_speed.py [--sizes 1000 2000 5000] [--targets 200] [--loo-units K] [--threads 1]``

Training patients are seeded subsamples of SUPPORT's training split (5,678 patients, 14 covariates); the
targets are the relative hazards of ``--targets`` test patients plus the test partial log-likelihood.
Every method covers all training patients. Exact LOO is timed on all of them unless ``--loo-units K``
(then on the first K, extrapolated); the paper's protocol (Adam, 100 epochs, cold start) is always timed
on 3 units and extrapolated. Peak memory is the process's peak resident set size after the VIF pass.
"""

from __future__ import annotations

import argparse
import json

from vif.experiments.cox import speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--loo-units", type=int, default=None, help="time exact LOO on K units and extrapolate")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    header = (f"{'n':>6} {'VIF s':>8} {'IF s':>8} {'lifelines s':>11} {'LOO s':>9} {'paper s':>10} "
              f"{'LOO/VIF':>8} {'paper/VIF':>9} {'LOO/IF':>8} {'peak GB':>8}")
    print(header)
    for n in args.sizes:
        row = speed("support", n_train=n, n_targets=args.targets, loo_units=args.loo_units, threads=args.threads)
        rows.append(row)
        s, r = row["seconds"], row["speedup"]
        print(f"{row['n_train']:>6} {s['vif']:>8.3f} {s['if']:>8.3f} {s['lifelines_delta_beta']:>11.3f} "
              f"{s['loo_exact']:>9.1f} {s['loo_paper']:>10.1f} {r['vif_vs_loo_exact']:>8.0f} "
              f"{r['vif_vs_loo_paper']:>9.0f} {r['if_vs_loo_exact']:>8.0f} {row['peak_rss_gb']:>8.2f}", flush=True)
    print("LOO s: exact warm-started Newton refits"
          + ("" if args.loo_units is None else f" (timed on {args.loo_units} units, extrapolated)")
          + "; paper s: Adam 100 epochs per refit, timed on 3 units and extrapolated.")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
