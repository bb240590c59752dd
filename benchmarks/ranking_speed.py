"""Seconds and ratios: VIF-HO against four leave-one-out protocols, at the Mediamill and Delicious shapes.

    python benchmarks/ranking_speed.py [--quick] [--shapes mediamill-like delicious-like] [--timed 3]

VIF-HO: closed-form Hessian, Cholesky, masked gradients and mask-aware test-loss targets for every studied
item, the item's own parameters held out of the step. LOO protocols (each timed on ``--timed`` items,
scaled to all studied items): warm-started L-BFGS (``vif.fit.lbfgs``, gtol 1e-7), warm-started Newton
(``vif.tasks.ranking.fit`` from theta_hat), the paper's protocol (Adam, lr 1e-3, batch 128, cold start, 20
epochs), and the exact refits of the book's ground truth (L-BFGS preconditioned with the full-data
Hessian, gtol 1e-10; its Hessian counted once). Synthetic data, softmax loss, one torch thread.
"""

from __future__ import annotations

import argparse

import torch

from vif.experiments import ranking as experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--shapes", nargs="+", default=["mediamill-like", "delicious-like"])
    parser.add_argument("--timed", type=int, default=3, help="refits timed per LOO protocol")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    protocols = {"lbfgs_loo": "L-BFGS", "newton_loo": "Newton", "adam_loo": "Adam", "preconditioned_loo": "precond."}
    print(f"{'shape':16s} {'items':>6s} {'params':>7s} {'VIF-HO s':>9s}"
          + "".join(f" {name + ' LOO s':>15s} {'ratio':>6s}" for name in protocols.values()))
    for shape in args.shapes:
        s = experiment.setup(shape, "softmax", quick=args.quick, seed=args.seed)
        t = experiment.timings(s, n_timed=args.timed)
        n_params = s.data.n_items * (s.data.X_train.shape[1] + 1)
        print(f"{shape:16s} {t['n_units']:6d} {n_params:7d} {t['vif']:9.2f}"
              + "".join(f" {t[key]:15.1f} {t[key + '_ratio']:6.1f}" for key in protocols), flush=True)


if __name__ == "__main__":
    main()
