"""Koh and Liang's validation on the breast-cancer data: VIF and IF against exact leave-one-out.

The decomposable baseline (:mod:`vif.tasks.logistic`): VIF equals the classical influence there. Used by
``python -m vif reproduce logistic``.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..datasets.tabular import breast_cancer
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import correlations
from ..tasks.logistic import DEFAULT_L2, LogisticRegression, Params, losses
from ._results import Comparison

__all__ = ["add_arguments", "reproduce"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``python -m vif reproduce logistic``."""
    parser.add_argument("--l2", type=float, default=DEFAULT_L2, help=f"L2 penalty on the weight (default {DEFAULT_L2:g})")


def reproduce(*, quick: bool, seed: int, l2: float = DEFAULT_L2, cache_dir: str | None = None) -> Comparison:
    """Koh & Liang's validation on breast cancer: VIF and IF vs exact LOO on the test log-losses.

    Returns the sizes (``settings``), ``estimates`` ``"vif"`` and ``"if"`` against ``truth["loo"]``, their mean
    Pearson/Spearman (``correlations``), seconds of each (``timings``) and ``details["speedup_vif_vs_loo"]``.
    ``quick`` refits a seeded subset of 60 training points instead of all of them.
    """
    data = breast_cancer(seed=seed)
    task = LogisticRegression(data.X_train, data.y_train, l2=l2)
    n = task.n_units
    theta = task.fit()

    def target(params: Params) -> torch.Tensor:
        return losses(params, data.X_test, data.y_test)

    units = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu")[:60] if quick else None
    seconds = {}
    start = time.perf_counter()
    predicted = influence(task, theta, target, units=units)
    seconds["vif"] = time.perf_counter() - start
    start = time.perf_counter()
    predicted_if = influence(task, theta, target, units=units, method="if")
    seconds["if"] = time.perf_counter() - start
    start = time.perf_counter()
    actual = leave_one_out(task, theta, target, units=units, progress=False, cache_dir=cache_dir,
                           cache_key=f"breast-cancer seed={seed} l2={l2}")
    seconds["loo"] = time.perf_counter() - start
    return Comparison(
        settings={"dataset": "breast_cancer", "n_train": n, "n_test": int(data.X_test.shape[0]),
                  "n_units_refitted": int(actual.shape[0]), "l2": l2},
        estimates={"vif": predicted, "if": predicted_if}, truth={"loo": actual},
        correlations={"vif": correlations(predicted, actual), "if": correlations(predicted_if, actual)},
        timings=seconds, details={"speedup_vif_vs_loo": seconds["loo"] / seconds["vif"]}, setup=task)
