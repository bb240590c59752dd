"""The neural Cox experiment (chapter 5): VIF on a DeepSurv-style MLP, approximate inverse Hessians, where it breaks.

Model: :class:`vif.tasks.neural_cox.NeuralCox` (tanh MLP, weighted Efron ties, weight decay) on a seeded subset
of SUPPORT's training split; targets: the log-hazards of seeded test patients. Ground truths per weight decay:

* ``"warm"``: leave-one-out refit from ``theta_hat`` (L-BFGS preconditioned by the full-data Hessian's
  Cholesky factor, Newton fallback) to ``max|grad| <= gtol``;
* ``"cold"``: refit from the same seeded initialisation as ``theta_hat`` (a seeded subset of units);
* ``"pbrf"``: the proximal Bregman response (Bae et al. 2022), :func:`vif.tasks.neural_cox.pbrf_objective`
  with no extra damping, whose linearisation is VIF with the Gauss-Newton Hessian.

A removal **changes basin** when the refit lands farther from VIF's predicted parameters than VIF's own step
(``||dtheta_loo - dtheta_vif|| > ||dtheta_vif||``); :func:`mask_path` refits along ``m = 1 - t e_i``
(``t = 0 .. 1``, each step warm-started from the last) to tell a genuine bifurcation (the slow path jumps
too, to the same refit) from an optimiser jump. Refits are cached in ``cache`` (:func:`vif.leave_one_out`'s
fingerprinted cache); fits and estimates are recomputed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.survival import load_support, split
from ..fit import DENSE_LIMIT, lbfgs_newton
from ..influence import influence, parameter_influence
from ..loo import leave_one_out
from ..metrics import correlations, relative_error
from ..params import flatten
from ..solvers import CG, Exact, LiSSA, cholesky_solver
from ..tasks.cox import negative_log_partial_likelihood, prepare
from ..tasks.neural_cox import NeuralCox, pbrf_objective
from ..threads import torch_threads
from ._results import Comparison

__all__ = ["Settings", "settings", "Model", "model", "estimates", "ground_truth", "sweep", "solver_table",
           "mask_path", "hook_speed", "add_arguments", "reproduce"]

LARGE_TARGETS = 20  # targets in the solver comparison at widths without a dense Hessian
N_TIMED = 3  # warm refits timed per width (the all-units LOO cost is extrapolated from them)
WEIGHT_DECAYS = {True: (3.0, 10.0), False: (1.0, 3.0, 10.0, 30.0)}  # keyed by quick
WIDTHS = {True: ((6,), (16,)), False: ((6,), (40, 40), (64, 64))}  # ~100, ~2,000, ~5,000 parameters at full size


@dataclass(frozen=True)
class Settings:
    """Everything that defines one fit (and its cache key)."""

    n_train: int = 300
    n_targets: int = 40
    hidden: tuple[int, ...] = (8,)
    weight_decay: float = 1.0
    ties: str = "efron"
    seed: int = 0
    gtol: float = 1e-7
    n_loo: int = 50  # warm-LOO and PBRF units (a seeded subset; 0 = all)

    def key(self) -> str:
        """A stable string naming the settings, for cache keys."""
        return json.dumps(asdict(self), sort_keys=True)


def settings(*, quick: bool, seed: int = 0, **overrides: Any) -> Settings:
    """The chapter's sizes: 200 patients, 30 targets, 30 LOO units at QUICK; 1,000, 100 and 150 at full size."""
    values: dict[str, Any] = dict(n_train=200 if quick else 1000, n_targets=30 if quick else 100,
                                  n_loo=30 if quick else 150, hidden=(6,), seed=seed)
    values.update(overrides)
    return Settings(**values)


@dataclass
class Model:
    """A fitted neural Cox model with its targets and validation score."""

    settings: Settings
    task: NeuralCox
    params: dict[str, torch.Tensor]
    x_test: torch.Tensor
    hessian: torch.Tensor | None
    fit_seconds: float
    grad_norm: float
    validation: float  # mean validation partial log-likelihood per event (higher is better)
    hessian_seconds: float  # forming (and factorising) the dense Hessian, 0 when none

    def target(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Test log-hazards ``(n_targets,)``."""
        return self.task.risk(params, self.x_test)


def _data(s: Settings):
    parts = split(load_support(), seed=s.seed)
    x, time_, event = parts.part("train")
    rows = np.random.default_rng(s.seed).permutation(len(x))[:s.n_train]
    x_test = parts.part("test")[0][np.random.default_rng(s.seed + 1).permutation(len(parts.part("test")[0]))[:s.n_targets]]
    return (x[rows], time_[rows], event[rows]), parts.part("val"), torch.as_tensor(x_test)


def model(s: Settings, device: str | None = None) -> Model:
    """Fit the model of ``s`` (seeded, deterministic); forms the dense Hessian when ``n_params <= DENSE_LIMIT``."""
    train, val, x_test = _data(s)
    task = NeuralCox(*train, hidden=s.hidden, weight_decay=s.weight_decay, ties=s.ties, seed=s.seed, gtol=s.gtol,
                     device=device)

    params, seconds = _timed(task.fit)
    matrix, hessian_seconds = _timed(task.precondition, params) if task.n_params <= DENSE_LIMIT else (None, 0.0)
    ones = task._ones()
    norm = float(flatten(torch.func.grad(task.objective)(params, ones))[0].abs().max())
    val_data = prepare(*val)
    eta = task.risk(params, val_data.x.to(task.data.x.device))
    val_ll = -float(negative_log_partial_likelihood(val_data, eta, torch.ones_like(eta), s.ties)) / float(val_data.event.sum())
    return Model(s, task, params, x_test.to(task.data.x.device), matrix, seconds, norm, val_ll, hessian_seconds)


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def estimates(m: Model) -> dict[str, Any]:
    """VIF and IF (exact Hessian) and VIF with the Gauss-Newton Hessian, all units: ``(n, n_targets)`` each, with seconds."""
    exact = m.hessian if m.hessian is not None else CG(tol=1e-10)
    product = m.task.gauss_newton(m.params)
    gn = Exact(operator=product) if m.task.n_params <= DENSE_LIMIT else CG(operator=product)
    out: dict[str, Any] = {"seconds": {}}
    for name, hessian, method in (("vif", exact, "vif"), ("if", exact, "if"), ("vif_gn", gn, "vif")):
        out[name], out["seconds"][name] = _timed(influence, m.task, m.params, m.target, hessian=hessian, method=method)
    out["step"] = parameter_influence(m.task, m.params, hessian=exact) if m.task.n_params <= DENSE_LIMIT else None
    return out


def ground_truth(m: Model, kind: str, units: list[int] | None = None, cache: Path | None = None, *,
                 on_unconverged: str = "raise") -> dict[str, Any]:
    """``"warm"``, ``"cold"`` or ``"pbrf"`` target changes ``(len(units), n_targets)``, refitted parameters, seconds.

    The refits go through the fingerprinted :func:`vif.leave_one_out` cache in ``cache``. ``seconds`` is the
    time of all ``units``' refits; with a cache (whose entries load in no time) it is measured on the first
    ``N_TIMED`` units, refitted afresh, and extrapolated. ``on_unconverged``: the stationarity check of
    ``theta_hat`` (``"warn"`` for a fit stopped at a stated looser tolerance).
    """
    task, params = m.task, m.params
    units = list(range(task.n_units)) if units is None else list(units)
    if kind == "pbrf":
        objective = pbrf_objective(task, params)
        theta = flatten(params)[0]
        gauss_newton = task.gauss_newton(params)(torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device))
        solve = cholesky_solver(gauss_newton, max_condition=math.inf)  # the PBRF refits' preconditioner

        gtol = m.settings.gtol  # bound here: the cache key hashes what the closure reads (m holds timings)

        def fit(mask: torch.Tensor, init: Any) -> Any:
            return lbfgs_newton(objective, dict(params), mask, gtol=gtol, preconditioner=solve)
    elif kind in ("warm", "cold"):
        fit, objective = task.fit, task.objective  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown ground truth {kind!r}")

    def refits(selected: list[int], cache_dir: Path | None) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        return _timed(leave_one_out, fit, params, m.target, n_units=task.n_units, units=selected,
                      warm_start=kind != "cold", objective=objective, cache_dir=cache_dir,
                      cache_key=f"neural-cox|{kind}|{m.settings.key()}", progress=False, return_params=True,
                      on_unconverged=on_unconverged)

    (changes, thetas), seconds = refits(units, cache)
    if cache is not None:
        timed = units[:N_TIMED]
        seconds = refits(timed, None)[1] / len(timed) * len(units)
    return {"changes": changes.cpu(), "thetas": thetas.cpu(), "seconds": seconds}


def mask_path(m: Model, unit: int, steps: int = 20) -> dict[str, Any]:
    """Refit along ``m = 1 - t e_unit`` for ``t`` on a grid of ``steps`` intervals (each warm-started from the last).

    Returns ``path`` ``(steps + 1, n_params)`` and ``largest_step`` (largest step over the mean step): a
    value near 1 is a smooth path, a large one a jump (a bifurcation if the endpoint equals the direct refit).
    """
    theta, unflatten = flatten(m.params)
    current, path = dict(m.params), [theta]
    for t in torch.linspace(0, 1, steps + 1, dtype=torch.float64, device="cpu")[1:]:
        mask = m.task._ones().clone()
        mask[unit] = 1.0 - float(t)
        current = m.task.fit(mask, current)
        path.append(flatten(current)[0])
    stacked = torch.stack(path)
    moves = (stacked[1:] - stacked[:-1]).norm(dim=1)
    return {"path": stacked.cpu(), "largest_step": float(moves.max() / moves.mean())}


def loo_units(m: Model) -> list[int]:
    """The seeded subset of ``n_loo`` training patients refitted (all when ``n_loo`` is 0 or too large)."""
    n, k = m.task.n_units, m.settings.n_loo
    order = torch.randperm(n, generator=torch.Generator().manual_seed(m.settings.seed), device="cpu")
    return order[:k].tolist() if 0 < k < n else list(range(n))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return correlations(a, b).pearson


def sweep(base: Settings, weight_decays: list[float], *, n_cold: int, cache: Path | None = None) -> list[Comparison]:
    """For each weight decay: fit, estimates, warm LOO and PBRF over all units (cold over ``n_cold``), basin changes.

    One :class:`Comparison` per weight decay: ``estimates`` ``"vif"``, ``"if"``, ``"vif_gn"`` (every training
    patient, ``(n, n_targets)``); ``truth`` ``"warm"``, ``"pbrf"`` (the units ``tensors["units"]``) and
    ``"cold"`` (the first ``n_cold`` of them); ``correlations``: Pearson ``"{estimate}_vs_{truth}"`` (and
    ``"warm_vs_pbrf"``, ``"warm_vs_cold"``); ``timings``: the estimates' seconds and ``loo_warm`` /
    ``loo_pbrf`` (all units); ``details``: ``validation``, ``basin_fraction`` (and ``cold_same_basin``);
    ``setup``: the :class:`Model`; ``tensors``: ``units``, ``basin`` (bool), ``miss`` and the refitted
    parameters ``warm_thetas`` / ``pbrf_thetas`` / ``cold_thetas``.
    """
    rows = []
    for decay in weight_decays:
        m = model(Settings(**{**asdict(base), "weight_decay": decay}))
        est = estimates(m)
        units = loo_units(m)
        warm, pbrf = ground_truth(m, "warm", units, cache), ground_truth(m, "pbrf", units, cache)
        theta = flatten(m.params)[0].cpu()
        jump = warm["thetas"] - theta
        step = est["step"].cpu()[units]
        miss = (jump - step).norm(dim=1) / step.norm(dim=1)
        truth = {"warm": warm["changes"], "pbrf": pbrf["changes"]}
        scores = {f"{name}_vs_{kind}": _corr(est[name][units], truth[kind])
                  for kind in ("warm", "pbrf") for name in ("vif", "if", "vif_gn")}
        scores["warm_vs_pbrf"] = _corr(warm["changes"], pbrf["changes"])
        tensors = {"units": units, "basin": miss > 1.0, "miss": miss, "warm_thetas": warm["thetas"],
                   "pbrf_thetas": pbrf["thetas"]}
        details = {"validation": m.validation, "basin_fraction": float((miss > 1.0).double().mean())}
        if n_cold:
            cold = ground_truth(m, "cold", units[:n_cold], cache)
            truth["cold"], tensors["cold_thetas"] = cold["changes"], cold["thetas"]
            scores["vif_vs_cold"] = _corr(est["vif"][units[:n_cold]], cold["changes"])
            scores["warm_vs_cold"] = _corr(warm["changes"][:n_cold], cold["changes"])
            details["cold_same_basin"] = float(((cold["thetas"] - warm["thetas"][:n_cold]).norm(dim=1)
                                                < 0.1 * jump[:n_cold].norm(dim=1)).double().mean())
        rows.append(Comparison(
            settings=asdict(m.settings), estimates={name: est[name] for name in ("vif", "if", "vif_gn")},
            truth=truth, correlations=scores,
            timings={**est["seconds"], "loo_warm": warm["seconds"], "loo_pbrf": pbrf["seconds"],
                     "fit": m.fit_seconds, "hessian": m.hessian_seconds},
            details=details, setup=m, tensors=tensors))
    return rows


def solver_table(s: Settings, widths: list[tuple[int, ...]], cache: Path | None = None, *, lissa_iter: int = 200
                 ) -> list[dict[str, Any]]:
    """Influence on the test log-hazards by every inverse-Hessian option at each width: error, Pearson, seconds.

    Seconds cover all training patients (the exact route includes forming the dense Hessian);
    ``loo_seconds_all_units`` extrapolates ``N_TIMED`` timed warm refits to all of them. LiSSA stops after
    ``lissa_iter`` steps (its error is reported, not raised).

    The reference is VIF with the exact dense Hessian where ``n_params <= DENSE_LIMIT``, else CG at ``tol=1e-8``
    (there the fit stops at ``max|grad| <= 1e-5`` and the first ``LARGE_TARGETS`` targets are used).
    """
    rows = []
    for hidden in widths:
        wide = sum(a * b + b for a, b in zip((14, *hidden), hidden)) + hidden[-1] > DENSE_LIMIT
        # without a dense Hessian: L-BFGS to a looser tolerance and LARGE_TARGETS targets (each CG step costs one per target)
        wide_settings = {"gtol": max(s.gtol, 1e-5), "n_targets": min(s.n_targets, LARGE_TARGETS)} if wide else {}
        m = model(Settings(**{**asdict(s), "hidden": tuple(hidden), **wide_settings}))
        gn = m.task.gauss_newton(m.params)
        dense = m.task.n_params <= DENSE_LIMIT
        lissa = LiSSA(tol=1e-6, max_iter=lissa_iter, on_nonconvergence="warn")
        options = {"exact": m.hessian, "cg": CG(tol=1e-6, max_iter=300, on_nonconvergence="warn"), "lissa": lissa,
                   "gn_exact": Exact(operator=gn), "gn_cg": CG(operator=gn, tol=1e-6, max_iter=300, on_nonconvergence="warn")}
        if not dense:
            reference = CG(tol=1e-8, max_iter=500, on_nonconvergence="warn")
            options = {"reference_cg": reference, **{k: v for k, v in options.items() if k in ("cg", "lissa", "gn_cg")}}

        # the wide fit stops at max|grad| <= 1e-5 (stated): the stationarity rule would refuse it
        unconverged = "warn" if wide else "raise"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = {name: _timed(influence, m.task, m.params, m.target, hessian=hessian, on_unconverged=unconverged)
                       for name, hessian in options.items()}
            loo = ground_truth(m, "warm", loo_units(m)[:N_TIMED], on_unconverged=unconverged)  # timed: not cached
        reference = results["exact" if dense else "reference_cg"][0]
        for name, (value, seconds) in results.items():
            seconds += m.hessian_seconds if name == "exact" else 0.0  # the dense Hessian is part of the exact route
            rows.append({"hidden": "x".join(map(str, hidden)), "n_params": m.task.n_params, "solver": name,
                         "seconds": seconds, "relative_error": relative_error(value, reference),
                         "pearson": _corr(value, reference), "fit_seconds": m.fit_seconds, "grad_norm": m.grad_norm,
                         "loo_seconds_all_units": loo["seconds"] / N_TIMED * m.task.n_units})
    return rows


def hook_speed(m: Model) -> dict[str, float]:
    """Seconds of the all-units VIF gradient differences: structured hook vs autodiff of the whole objective."""
    masks = m.task._ones().repeat(m.task.n_units, 1)
    masks[torch.arange(m.task.n_units, device="cpu"), torch.arange(m.task.n_units, device="cpu")] = 0.0
    fast, hook = _timed(m.task.mask_gradient_differences, m.params, masks)
    theta, unflatten = flatten(m.params)
    gradient = torch.func.grad(lambda vector, mask: m.task.objective(unflatten(vector), mask))
    slow, autodiff = _timed(lambda: torch.cat([torch.func.vmap(lambda mask: gradient(theta, mask))(block)
                                               for block in masks.split(64)]) - gradient(theta, m.task._ones()))
    return {"hook": hook, "autodiff": autodiff, "max_difference": float((fast - slow).abs().max())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``python -m vif reproduce neural-cox``."""
    parser.add_argument("--cache-dir", default=None, help="folder for the LOO refits (default: none)")


def reproduce(*, quick: bool, seed: int, cache_dir: str | None = None) -> Comparison:
    """The chapter's headline numbers: the weight-decay sweep and the solver table.

    One part per weight decay (:func:`sweep`); the solver table (:func:`solver_table`) at the weight decay of
    best validation in ``details["solvers"]``.
    """
    cache = None if cache_dir is None else Path(cache_dir)
    base = settings(quick=quick, seed=seed)
    with torch_threads(1):
        rows = sweep(base, list(WEIGHT_DECAYS[quick]), n_cold=0, cache=cache)
        best = max(rows, key=lambda row: row.details["validation"]).settings["weight_decay"]
        table = solver_table(Settings(**{**asdict(base), "weight_decay": best}), list(WIDTHS[quick]), cache,
                             lissa_iter=10 if quick else 200)
    return Comparison(settings=asdict(base), parts={f"weight_decay={row.settings['weight_decay']:g}": row for row in rows},
                      details={"best_weight_decay": best, "solvers": table})
