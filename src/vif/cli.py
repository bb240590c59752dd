"""Command line: ``python -m vif reproduce <experiment> [--quick] [--seed S] --out results.json``.

Each experiment is a module of :mod:`vif.experiments` that defines ``add_arguments(parser)`` (its own
options) and ``reproduce(*, quick, seed, **options) -> Comparison`` (:mod:`vif.experiments._results`). The
CLI reads that registry, parses, calls and writes the comparison's JSON, the same keys for every experiment
(``settings``, ``correlations``, ``timings``, ``details``, ``parts``) after the run's own (``experiment``,
``quick``, ``seed``, ``options``, ``total_seconds``): no maths here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import experiments

__all__ = ["main"]


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text!r}") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32) (a numpy/torch seed), got {seed}")
    return seed


def _out(text: str) -> Path:
    """A writable file path: not a folder, its parent creatable and writable (checked before any work)."""
    path = Path(text)
    if not text or text.endswith(("/", "\\")) or path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a file path for the JSON results, got the folder {text!r}")
    parent = path.parent
    existing = next((folder for folder in (parent, *parent.parents) if folder.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {parent}: {existing} is a file")
    if not os.access(existing, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{path} is not writable")
    return path


def _parser(experiment: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vif", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reproduce = commands.add_parser("reproduce", help="run a registered experiment and write its results as JSON")
    reproduce.add_argument("experiment", choices=experiments.names(), help="experiment name")
    reproduce.add_argument("--quick", action="store_true", help="small sizes (CI); default: the paper's sizes")
    reproduce.add_argument("--seed", type=_seed, default=0, help="random seed in [0, 2**32) (default 0)")
    reproduce.add_argument("--out", type=_out, required=True, help="path of the JSON results file to write")
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
               "total_seconds": time.perf_counter() - start, **results.to_json()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0
