"""Command line: ``python -m vif reproduce <experiment> [--quick] [--seed S] --out results.json``.

Each experiment is a module of :mod:`vif.experiments` that defines ``add_arguments(parser)`` (its own
options) and ``reproduce(*, quick, seed, **options) -> dict`` (JSON-serialisable results: correlations,
timings, sizes). The CLI reads that registry, parses, calls and writes JSON: no maths here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import experiments

__all__ = ["main"]


def _parser(experiment: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vif", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reproduce = commands.add_parser("reproduce", help="run a registered experiment and write its results as JSON")
    reproduce.add_argument("experiment", choices=experiments.names(), help="experiment name")
    reproduce.add_argument("--quick", action="store_true", help="small sizes (CI); default: the paper's sizes")
    reproduce.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    reproduce.add_argument("--out", type=Path, required=True, help="path of the JSON results file to write")
    commands.add_parser("list", help="list the registered experiments")
    if experiment in experiments.names():
        module = experiments.load(experiment)
        module.add_arguments(reproduce.add_argument_group(f"{experiment} options"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    experiment = argv[1] if len(argv) > 1 and argv[0] == "reproduce" else None
    args = _parser(experiment).parse_args(argv)
    if args.command == "list":
        print("\n".join(experiments.names()))
        return 0
    options = {key: value for key, value in vars(args).items() if key not in {"command", "experiment", "quick", "seed", "out"}}
    module = experiments.load(args.experiment)
    start = time.perf_counter()
    results = module.reproduce(quick=args.quick, seed=args.seed, **options)
    results = {"experiment": args.experiment, "quick": args.quick, "seed": args.seed, "options": options,
               "total_seconds": time.perf_counter() - start, **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0
