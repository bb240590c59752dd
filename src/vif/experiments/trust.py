"""Trust diagnostics validated against leave-one-out refits on two non-convex models with basin changes.

Models (both fitted to ``max|grad| <= 1e-10``, refits warm-started from ``theta_hat`` to the same tolerance):

* ``"mlp"``: a one-hidden-layer tanh MLP classifier on scikit-learn's two moons (seeded, generated offline),
  summed log-loss with a weak weight decay; units are training points, targets the test points' log-losses.
* ``"karate"``: the chapter's skip-gram on Zachary's karate club with a weak ``l2``; units are nodes,
  targets the chapter's pair losses and link scores (targets that contain the removed node excluded).

For each model: the VIF estimate, the trust report (:func:`vif.trust.trust`) and the exact refits. A
(unit, target) estimate is *wrong* when ``|VIF - actual| > median |actual|`` (per target). Reported: the ROC
AUC of each indicator for that label, the mean per-target Pearson correlation over all units and over the
units not flagged, the fraction flagged, and the cost of the trust call against the VIF call.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.datasets import make_moons

from ..fit import newton, saddle_free_newton
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import roc_auc
from ..threads import torch_threads
from ..trust import RECOMMENDED_THRESHOLD, trust
from ._results import Comparison
from ._setups import EmbeddingSetup, embedding_settings, embedding_setup

__all__ = ["MLP", "mlp", "karate", "wrong_estimates", "validate", "add_arguments", "reproduce", "MODELS", "QUICK_UNITS"]

MODELS = ("mlp", "karate")


@dataclass
class MLP:
    """A tanh MLP classifier as a task: ``objective(params, mask) = sum_i m_i logloss_i + (l2 / 2) ||theta||^2``."""

    X: torch.Tensor  # (n, 2)
    y: torch.Tensor  # (n,)
    X_test: torch.Tensor
    y_test: torch.Tensor
    hidden: int
    l2: float
    seed: int = 0
    gtol: float = 1e-10

    @property
    def n_units(self) -> int:
        """Training points."""
        return self.X.shape[0]

    @staticmethod
    def logits(params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """``w2 . tanh(W1 x + b1) + b2`` for each row of ``X``: ``(n,)``."""
        return torch.tanh(X @ params["W1"] + params["b1"]) @ params["w2"] + params["b2"]

    def objective(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Masked summed log-loss plus weight decay."""
        losses = torch.nn.functional.binary_cross_entropy_with_logits(self.logits(params, self.X), self.y,
                                                                      reduction="none")
        penalty = sum((value ** 2).sum() for value in params.values())
        return (mask * losses).sum() + 0.5 * self.l2 * penalty

    def target(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Test log-losses ``(n_test,)``."""
        return torch.nn.functional.binary_cross_entropy_with_logits(self.logits(params, self.X_test), self.y_test,
                                                                    reduction="none")

    def init(self) -> dict[str, torch.Tensor]:
        """Seeded N(0, 1/fan_in) start."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        d, h = self.X.shape[1], self.hidden
        return {"W1": torch.randn(d, h, generator=generator, device="cpu", dtype=torch.float64) / d ** 0.5,
                "b1": torch.zeros(h, dtype=torch.float64, device="cpu"),
                "w2": torch.randn(h, generator=generator, device="cpu", dtype=torch.float64) / h ** 0.5,
                "b2": torch.zeros(1, dtype=torch.float64, device="cpu")[0]}

    def fit(self, mask: torch.Tensor | None = None, init: dict[str, torch.Tensor] | None = None
            ) -> dict[str, torch.Tensor]:
        """From the seeded start: saddle-free Newton; from ``init`` (a warm start): damped Newton; to ``gtol``."""
        mask = torch.ones(self.n_units, dtype=torch.float64, device="cpu") if mask is None else mask
        if init is None:
            return saddle_free_newton(self.objective, self.init(), mask, gtol=self.gtol, max_iter=500)
        return newton(self.objective, init, mask, gtol=self.gtol, max_iter=200)


def mlp(*, n_train: int = 80, n_test: int = 40, hidden: int = 6, l2: float = 0.01, seed: int = 0) -> MLP:
    """The two-moons MLP task (noise 0.3)."""
    X, y = make_moons(n_samples=n_train + n_test, noise=0.3, random_state=seed)
    X = torch.as_tensor(X, dtype=torch.float64, device="cpu")
    y = torch.as_tensor(y, dtype=torch.float64, device="cpu")
    return MLP(X[:n_train], y[:n_train], X[n_train:], y[n_train:], hidden, l2, seed)


def karate(*, l2: float = 0.03, seed: int = 0) -> EmbeddingSetup:
    """The chapter's skip-gram on karate with a weak ``l2``."""
    return embedding_setup(embedding_settings(quick=True, seed=seed, l2=l2, dampings=()))


def wrong_estimates(estimate: Any, actual: Any, valid: Any = None) -> np.ndarray:
    """Bool ``(n_units, n_targets)``: ``|estimate - actual|`` exceeds the median ``|actual|`` of its target.

    The label the trust indicators are validated against; ``valid`` (bool, same shape) leaves entries out of
    the median (leave them out of any score computed on the labels too).
    """
    estimate, actual = np.asarray(estimate, dtype=float), np.asarray(actual, dtype=float)
    valid = np.ones_like(actual, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    typical = np.nanmedian(np.abs(np.where(valid, actual, np.nan)), axis=0, keepdims=True)
    return np.abs(estimate - actual) > typical


def _mean_pearson(predicted: np.ndarray, actual: np.ndarray, valid: np.ndarray, keep: np.ndarray) -> float:
    """Mean over targets of the Pearson correlation across the units ``keep`` (and ``valid`` entries)."""
    values = []
    for column in range(actual.shape[1]):
        rows = valid[:, column] & keep
        if rows.sum() > 2 and predicted[rows, column].std() > 0 and actual[rows, column].std() > 0:
            values.append(np.corrcoef(predicted[rows, column], actual[rows, column])[0, 1])
    return float(np.mean(values))


def validate(model: str, *, seed: int = 0, cache_dir=None, threshold: float = RECOMMENDED_THRESHOLD,
             n_units: int | None = None) -> Comparison:
    """VIF, trust report and refits of one model; the indicator's AUC and the correlations (module notes).

    Returns a :class:`Comparison`: ``estimates`` ``"vif"`` and ``"trust"`` (the report's own estimate) against
    ``truth["loo"]``, ``(n_units, n_targets)``; ``correlations``: VIF's mean per-target Pearson with the refits
    over ``"all"`` units, the ``"reliable"`` entries and the ``"unflagged"`` units; ``timings``: ``"vif"`` and
    ``"trust"``; ``details``: the AUCs of the risk and of ``newton`` for the *wrong* label, the fractions
    unreliable, flagged and wrong, the largest gap between the two estimates and ``cost_ratio`` (trust / VIF).
    ``n_units``: study only that many evenly spaced units (``None``: all; the chapter's QUICK mode).
    """
    if model == "mlp":
        task = mlp(seed=seed)
        params = task.fit()
        objective, target, options, valid = task, task.target, {"hessian": "exact"}, None
    else:
        problem = karate(seed=seed)
        task, params, target = problem.loss, problem.params, problem.target
        objective, options, valid = task, {"hessian": "pinv", "target_takes_mask": True}, problem.valid()
    units = None if n_units is None else np.unique(np.linspace(0, task.n_units - 1, n_units).round().astype(int))
    if units is not None:
        options["units"] = units.tolist()
        valid = None if valid is None else valid[units]
    start = time.perf_counter()
    estimate = influence(objective, params, target, **options)
    vif_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = trust(objective, params, target, threshold=threshold, **options)
    trust_seconds = time.perf_counter() - start
    actual = leave_one_out(task, params, target, units=options.get("units"), cache_dir=cache_dir, progress=False,
                           cache_key=f"trust-{model}-{seed}", target_takes_mask=options.get("target_takes_mask"))
    n = len(actual)
    estimates = {"vif": estimate.reshape(n, -1), "trust": report.estimate.reshape(n, -1)}
    estimate, actual = estimates["vif"].numpy(), actual.reshape(n, -1)
    truth = {"loo": actual}
    actual = actual.numpy()
    valid = np.ones_like(actual, dtype=bool) if valid is None else valid.numpy()
    wrong = wrong_estimates(estimate, actual, valid)
    risk = report.risk.reshape(n, -1).numpy()
    newton = np.broadcast_to(report.newton.numpy()[:, None], actual.shape)
    flagged, unreliable = report.flagged.numpy(), report.unreliable.reshape(n, -1).numpy()
    everything = np.ones(n, dtype=bool)
    return Comparison(
        settings={"model": model, "n_units": int(actual.shape[0]), "n_targets": int(actual.shape[1]),
                  "threshold": threshold, "risk_threshold": report.risk_threshold},
        estimates=estimates, truth=truth,
        correlations={"all": _mean_pearson(estimate, actual, valid, everything),
                      "reliable": _mean_pearson(estimate, actual, valid & ~unreliable, everything),
                      "unflagged": _mean_pearson(estimate, actual, valid, ~flagged)},
        timings={"vif": vif_seconds, "trust": trust_seconds},
        details={"auc_risk": roc_auc(wrong[valid], risk[valid]), "auc_newton": roc_auc(wrong[valid], newton[valid]),
                 "fraction_unreliable": float(unreliable[valid].mean()), "fraction_flagged": float(flagged.mean()),
                 "fraction_wrong": float(wrong[valid].mean()),
                 "max_estimate_gap": float(np.abs(estimates["trust"].numpy() - estimate).max()),
                 "cost_ratio": trust_seconds / vif_seconds})


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Options of ``python -m vif reproduce trust``."""
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to validate")
    parser.add_argument("--threshold", type=float, default=RECOMMENDED_THRESHOLD, help="flag newton above this")


QUICK_UNITS = {"mlp": 20, "karate": 6}


def reproduce(*, quick: bool, seed: int = 0, models=MODELS, threshold: float = RECOMMENDED_THRESHOLD,
              cache_dir=None) -> Comparison:
    """Validate the trust indicator on each model (one part each); ``quick`` studies :data:`QUICK_UNITS` units."""
    with torch_threads(1):
        parts = {model: validate(model, seed=seed, cache_dir=cache_dir, threshold=threshold,
                                 n_units=QUICK_UNITS[model] if quick else None) for model in models}
    return Comparison(settings={"models": list(models), "threshold": threshold, "seed": seed}, parts=parts)
