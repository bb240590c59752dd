"""Seconds and ratios: VIF against three leave-one-out protocols, at the Mediamill and Delicious shapes.

    python benchmarks/ranking_speed.py [--quick] [--shapes mediamill-like delicious-like] [--timed 3]

VIF: closed-form Hessian, Cholesky, masked gradients and mask-aware test-loss targets for every studied
item. LOO protocols (each timed on ``--timed`` items, scaled to all studied items): warm-started L-BFGS
(``vif.fit.lbfgs``, gtol 1e-7), warm-started Newton (``vif.ranking.fit`` from theta_hat), and the paper's
protocol (Adam, lr 1e-3, batch 128, cold start, 20 epochs). Synthetic data, softmax loss, one torch thread.
"""

from __future__ import annotations

import argparse

import torch

from vif import ranking_experiment as experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--shapes", nargs="+", default=["mediamill-like", "delicious-like"])
    parser.add_argument("--timed", type=int, default=3, help="refits timed per LOO protocol")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'shape':16s} {'items':>6s} {'params':>7s} {'VIF s':>8s} {'L-BFGS LOO s':>13s} {'ratio':>7s} "
          f"{'Newton LOO s':>13s} {'ratio':>7s} {'Adam LOO s':>11s} {'ratio':>7s}")
    for shape in args.shapes:
        s = experiment.setup(shape, "softmax", quick=args.quick, seed=args.seed)
        t = experiment.timings(s, n_timed=args.timed)
        n_params = s.data.n_items * (s.data.X_train.shape[1] + 1)
        print(f"{shape:16s} {t['n_units']:6d} {n_params:7d} {t['vif']:8.2f} {t['lbfgs_loo']:13.1f} "
              f"{t['lbfgs_loo_ratio']:7.1f} {t['newton_loo']:13.1f} {t['newton_loo_ratio']:7.1f} "
              f"{t['adam_loo']:11.1f} {t['adam_loo_ratio']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
