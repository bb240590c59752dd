"""Runtime of VIF, IF and leave-one-out retraining for the skip-gram node embedding.

Prints one row per graph: Zachary's karate club and stochastic-block-model graphs of 200, 500 and 1,000
nodes (generated offline, seeded). Targets: 20 link scores. The Hessian backend is the dense
pseudo-inverse up to ``vif.fit.NEWTON_LIMIT`` parameters and conjugate gradient above; LOO refit
times are the mean of ``--refits`` warm and cold refits times the number of nodes (all nodes on karate).
Runs on one torch thread: these problems are too small for threads to help on a shared machine.

    python benchmarks/embedding_speed.py [--sizes 200 500 1000] [--refits 2] [--json out.json]
"""

import argparse
import json

import torch

from vif.experiments.node_embedding import speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 500, 1000], help="SBM sizes")
    parser.add_argument("--refits", type=int, default=2, help="refits timed per SBM graph (warm and cold)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [speed("karate")] + [speed("sbm", n_nodes=n, n_loo=args.refits) for n in args.sizes]
    columns = ["graph", "n_params", "backend", "vif", "if", "refit_warm", "refit_cold", "loo_cold", "loo_cold/vif",
               "loo_cold/if", "loo_warm/vif"]
    print("  ".join(f"{name:>13}" for name in columns))
    for row in rows:
        print("  ".join(f"{row[name]:>13.3g}" if isinstance(row[name], float) else f"{row[name]!s:>13}"
                        for name in columns))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
