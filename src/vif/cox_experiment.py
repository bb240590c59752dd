"""The Cox experiment: VIF, the infinitesimal IF and lifelines' ``delta_beta`` against leave-one-out.

Targets (the paper's): the relative hazards ``exp(beta^T x)`` of the test patients, plus the test
partial log-likelihood as one more column. Ground truth: exact warm-started LOO refits (Newton to
``max|grad| <= 1e-9``), and, as a second truth, the paper's training protocol (Adam, lr 0.01, full batch,
cold start from one seeded initialisation, 100 epochs on SUPPORT, 200 otherwise).

Used by ``python -m vif reproduce cox`` (:func:`reproduce`) and by the chapter ``book/02_cox.md``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from . import cox
from .datasets.survival import DATASETS, SurvivalSplit, split
from .fit import gradient_norm, newton
from .influence import influence
from .loo import leave_one_out
from .metrics import correlations
from .threads import torch_threads

__all__ = ["CoxSetup", "setup", "estimate", "lifelines_delta_beta", "exact_loo", "adam", "paper_loo", "run",
           "reproduce", "add_arguments", "speed", "relative_error", "EPOCHS", "QUICK_UNITS", "EPS_GRID"]

EPOCHS = {"support": 100, "rotterdam": 200, "metabric": 200, "gbsg2": 200}  # the paper's protocol
QUICK_UNITS = 150  # LOO units under --quick (a seeded subsample of the training patients)
PAPER_UNITS = {True: 20, False: 400}  # units for the paper-protocol LOO (quick, full)
TIMING_UNITS = 100  # at most this many fresh refits timed when the LOO results come from a cache
EPS_GRID = (0.01, 0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class CoxSetup:
    """A fitted Cox model on a dataset's training split, with its objective and targets.

    Attributes:
        name: dataset name. data: the split. ties: tie method of every fit here.
        train: ``(x (n, p), time (n,), event (n,))`` the training patients used (standardised covariates).
        rows_train / rows_test: their rows in ``data.dataset.frame``.
        objective: masked objective over the training patients (see :func:`vif.cox.objective`).
        beta_hat: exact fit ``(p,)``. target: ``beta -> (n_test + 1,)``: test relative hazards, then the
            test partial log-likelihood. units: training patients whose removal is studied ``(n_units,)``.
    """

    name: str
    data: SurvivalSplit
    ties: str
    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    rows_train: np.ndarray
    rows_test: np.ndarray
    objective: Any
    beta_hat: torch.Tensor
    target: Any
    units: torch.Tensor

    @property
    def n_train(self) -> int:
        """Training patients (units of the objective)."""
        return int(self.train[0].shape[0])


def setup(dataset: str, *, quick: bool, seed: int = 0, ties: str = "efron", n_train: int | None = None,
          n_targets: int | None = None, **loader_options: Any) -> CoxSetup:
    """Load, split (seeded), fit exactly, and choose the units.

    Args:
        dataset: a key of :data:`vif.datasets.survival.DATASETS`.
        quick: study ``QUICK_UNITS`` seeded training patients instead of all.
        seed: seed of the split and of every subsample.
        ties: ``"efron"`` (default) or ``"breslow"``.
        n_train / n_targets: optional seeded subsamples of the training / test patients (speed sweeps).
    """
    data = split(DATASETS[dataset](**loader_options), seed=seed)
    rng = np.random.default_rng(seed)
    x, time_, event = data.part("train")
    x_test, time_test, event_test = data.part("test")
    rows_train, rows_test = np.arange(len(x)), np.arange(len(x_test))
    if n_train is not None and n_train < len(x):
        rows_train = np.sort(rng.choice(len(x), n_train, replace=False))
    if n_targets is not None and n_targets < len(x_test):
        rows_test = np.sort(rng.choice(len(x_test), n_targets, replace=False))
    train = (x[rows_train], time_[rows_train], event[rows_train])
    objective = cox.objective(*train, ties=ties)
    n = len(rows_train)
    beta_hat = newton(objective, torch.zeros(x.shape[1], dtype=torch.float64), torch.ones(n, dtype=torch.float64))
    hazard = cox.relative_hazard(x_test[rows_test])
    loglik = cox.log_partial_likelihood(x_test[rows_test], time_test[rows_test], event_test[rows_test], ties=ties)

    def target(beta: torch.Tensor) -> torch.Tensor:
        return torch.cat([hazard(beta), loglik(beta)[None]])

    units = torch.arange(n)
    if quick and n > QUICK_UNITS:
        units = torch.sort(torch.from_numpy(rng.choice(n, QUICK_UNITS, replace=False)))[0]
    return CoxSetup(dataset, data, ties, train, data.rows_train[rows_train], data.rows_test[rows_test], objective,
                    beta_hat, target, units)


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def estimate(problem: CoxSetup, *, method: str = "vif", eps: float = 1.0, units: torch.Tensor | None = None) -> torch.Tensor:
    """``vif.influence`` on the setup's targets: ``(n_units, n_test + 1)``, predicted ``f(beta_-i) - f(beta_hat)``."""
    return influence(problem.objective, problem.beta_hat, problem.target, n_units=problem.n_train, method=method,
                     eps=eps, units=problem.units if units is None else units)


def lifelines_delta_beta(problem: CoxSetup) -> torch.Tensor:
    """The lifelines ``delta_beta`` residuals pushed through the target gradient: ``(n_units, n_test + 1)``.

    lifelines 0.30.3 returns ``beta_hat - beta_-i`` (approximately), so the sign is flipped. Its
    ``_compute_score`` rescales the coefficients by the covariates' standard deviations although the
    covariates it receives are not rescaled; we therefore hand it covariates divided by their standard
    deviation (ddof = 1, so its rescaling is the identity) and map the result back. Its score residuals
    treat tied times as if ordered (no Breslow/Efron risk sets), which remains -- a real difference.
    """
    from lifelines import CoxPHFitter

    x, time_, event = problem.train
    scale = x.std(axis=0, ddof=1)
    columns = [f"x{k}" for k in range(x.shape[1])]
    frame = pd.DataFrame(x / scale, columns=columns).assign(time=time_, event=event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = CoxPHFitter().fit(frame, "time", "event", fit_options={"precision": 1e-10})
        residuals = fitted.compute_residuals(frame, "delta_beta").sort_index().to_numpy()
    delta = -torch.from_numpy(residuals / scale)[problem.units]  # (n_units, p), predicted beta_-i - beta_hat
    jacobian = torch.func.jacrev(problem.target)(problem.beta_hat)  # (n_targets, p)
    return delta @ jacobian.T


def _refit(problem: CoxSetup):
    def refit(mask: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        return newton(problem.objective, problem.beta_hat if init is None else init, mask)

    return refit


def exact_loo(problem: CoxSetup, *, units: torch.Tensor | None = None, cache_dir: str | Path | None = None,
              progress: bool = False) -> torch.Tensor:
    """Actual ``f(beta_-i) - f(beta_hat)`` by warm-started Newton refits, ``(n_units, n_test + 1)``."""
    return leave_one_out(_refit(problem), problem.beta_hat, problem.target, n_units=problem.n_train,
                         units=problem.units if units is None else units, warm_start=True, cache_dir=cache_dir,
                         cache_key=f"cox-{problem.name}-{problem.ties}-newton", progress=progress,
                         objective=problem.objective)


def adam(objective, init: torch.Tensor, masks: torch.Tensor, *, epochs: int, lr: float = 0.01) -> torch.Tensor:
    """Full-batch Adam from ``init`` for each mask (vectorised): ``masks (B, n) -> params (B, p)``.

    The objective is divided by the number of events kept, as the paper's loss (mean over events).
    Standard Adam (beta1 0.9, beta2 0.999, eps 1e-8, bias correction), ``epochs`` steps.
    """
    events = objective.data.event[torch.argsort(objective.data.order)]  # event indicators, input row order

    def mean_loss(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return objective(beta, mask) / (mask * events).sum()

    gradient = vmap(grad(mean_loss))
    beta = init.expand(masks.shape[0], -1).clone()
    first, second = torch.zeros_like(beta), torch.zeros_like(beta)
    for step in range(1, epochs + 1):
        g = gradient(beta, masks)
        first = 0.9 * first + 0.1 * g
        second = 0.999 * second + 0.001 * g * g
        beta = beta - lr * (first / (1 - 0.9**step)) / (torch.sqrt(second / (1 - 0.999**step)) + 1e-8)
    return beta


def paper_loo(problem: CoxSetup, units: torch.Tensor, *, seed: int, chunk_size: int = 64
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The paper's protocol: Adam fits from one seeded cold start, on the full data and without each unit.

    Returns:
        ``(changes (n_units, n_test + 1), beta_adam (p,), max|grad|`` of the summed objective at ``beta_adam``).
    """
    p, n = problem.beta_hat.numel(), problem.n_train
    bound = 1 / math.sqrt(p)  # torch.nn.Linear's default initialisation
    init = (torch.rand(p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1) * bound
    epochs = EPOCHS[problem.name]
    full = adam(problem.objective, init, torch.ones(1, n, dtype=torch.float64), epochs=epochs)[0]
    changes = []
    for chunk in torch.split(units, chunk_size):
        masks = torch.ones(len(chunk), n, dtype=torch.float64)
        masks[torch.arange(len(chunk)), chunk] = 0.0
        refits = adam(problem.objective, init, masks, epochs=epochs)
        changes.append(vmap(problem.target)(refits) - problem.target(full))
    grad_norm = gradient_norm(problem.objective, full, torch.ones(n, dtype=torch.float64))
    return torch.cat(changes), full, grad_norm


def _corr(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, dict[str, float]]:
    """Mean Pearson/Spearman over test relative hazards, and for the test partial log-likelihood."""
    hazards = correlations(predicted[:, :-1], actual[:, :-1])
    loglik = correlations(predicted[:, -1], actual[:, -1])
    return {"hazard": {"pearson": hazards.pearson, "spearman": hazards.spearman},
            "test_loglik": {"pearson": loglik.pearson, "spearman": loglik.spearman}}


def relative_error(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """``||predicted - actual||_F / ||actual||_F``: how far the estimates are from LOO in size, not just rank."""
    return float(torch.linalg.norm(predicted - actual) / torch.linalg.norm(actual))


def speed(dataset: str = "support", *, n_train: int, n_targets: int = 200, seed: int = 0,
          loo_units: int | None = None, paper_units: int = 3, threads: int | None = 1) -> dict[str, Any]:
    """Seconds of every method on one training size, all units; LOO extrapolated from ``loo_units`` if given.

    Returns the sizes, ``seconds`` (vif, if, lifelines_delta_beta, loo_exact, loo_paper), ``speedup`` and
    the process's peak resident memory after the VIF pass (``peak_rss_gb``, Linux ``ru_maxrss``).
    """
    import resource

    with torch_threads(threads):
        problem = setup(dataset, quick=False, seed=seed, n_train=n_train, n_targets=n_targets)
        units = problem.units
        _, t_vif = _timed(estimate, problem, method="vif")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        _, t_if = _timed(estimate, problem, method="if")
        _, t_lifelines = _timed(lifelines_delta_beta, problem)
        timed = units if loo_units is None else units[:loo_units]
        _, t_loo = _timed(exact_loo, problem, units=timed)
        t_loo *= len(units) / len(timed)
        _, t_paper = _timed(paper_loo, problem, units[:paper_units], seed=seed, chunk_size=1)
        t_paper *= len(units) / paper_units
    seconds = {"vif": t_vif, "if": t_if, "lifelines_delta_beta": t_lifelines, "loo_exact": t_loo, "loo_paper": t_paper}
    return {"n_train": problem.n_train, "n_targets": len(problem.rows_test), "n_units": len(units),
            "loo_exact_timed_units": len(timed), "loo_paper_timed_units": paper_units, "peak_rss_gb": peak,
            "seconds": seconds, "speedup": {"vif_vs_loo_exact": t_loo / t_vif, "vif_vs_loo_paper": t_paper / t_vif,
                                             "if_vs_loo_exact": t_loo / t_if}}


def run(dataset: str, *, quick: bool, seed: int = 0, cache_dir: str | Path | None = None, progress: bool = False,
        eps_grid: tuple[float, ...] = EPS_GRID, threads: int | None = 1, **loader_options: Any) -> dict[str, Any]:
    """Everything the chapter and the CLI report for one dataset; arrays are kept for plots.

    With ``cache_dir`` the exact LOO is read from (and written to) the cache, and its time is measured on
    ``TIMING_UNITS`` fresh refits and extrapolated (``loo_exact_extrapolated``); without, it is timed in full.
    ``threads``: torch intra-op threads for the whole run (see :func:`torch_threads`).
    """
    with torch_threads(threads):
        return _run(dataset, quick=quick, seed=seed, cache_dir=cache_dir, progress=progress, eps_grid=eps_grid,
                    **loader_options)


def _run(dataset: str, *, quick: bool, seed: int, cache_dir: str | Path | None, progress: bool,
         eps_grid: tuple[float, ...], **loader_options: Any) -> dict[str, Any]:
    problem = setup(dataset, quick=quick, seed=seed, **loader_options)
    units, n_units = problem.units, len(problem.units)
    vif_estimate, t_vif = _timed(estimate, problem, method="vif")
    if_estimate, t_if = _timed(estimate, problem, method="if")
    lifelines_estimate, t_lifelines = _timed(lifelines_delta_beta, problem)
    loo, t_loo = _timed(exact_loo, problem, cache_dir=cache_dir, progress=progress)
    extrapolated = cache_dir is not None
    if extrapolated:
        n_timed = min(TIMING_UNITS, max(10, n_units // 10))
        timing_units = units[torch.randperm(n_units, generator=torch.Generator().manual_seed(seed))[:n_timed]]
        _, t_part = _timed(exact_loo, problem, units=timing_units)
        t_loo = t_part * n_units / len(timing_units)
    paper_units = units[torch.randperm(n_units, generator=torch.Generator().manual_seed(seed + 1))[:PAPER_UNITS[quick]]]
    paper, beta_adam, adam_grad = paper_loo(problem, paper_units, seed=seed)
    position = {int(u): k for k, u in enumerate(units)}
    rows = torch.tensor([position[int(u)] for u in paper_units])
    _, t_one = _timed(paper_loo, problem, paper_units[:3], seed=seed, chunk_size=1)  # sequential, as in the paper
    t_paper = t_one / 3 * n_units
    eps_path = {}
    for eps in eps_grid:
        predicted = vif_estimate if eps == 1.0 else estimate(problem, method="vif", eps=eps)  # eps = 1 is VIF
        eps_path[eps] = {"pearson": _corr(predicted, loo)["hazard"]["pearson"],
                         "relative_error": relative_error(predicted[:, :-1], loo[:, :-1])}
    seconds = {"vif": t_vif, "if": t_if, "lifelines_delta_beta": t_lifelines, "loo_exact": t_loo,
               "loo_paper": t_paper}
    return {
        "problem": problem, "loo": loo, "vif": vif_estimate, "if": if_estimate, "lifelines": lifelines_estimate,
        "paper_loo": paper, "paper_rows": rows, "beta_adam": beta_adam,
        "summary": {
            "dataset": dataset, "n_patients": problem.data.dataset.n, "n_train": problem.n_train,
            "n_test": len(problem.rows_test), "n_units": n_units, "n_covariates": problem.beta_hat.numel(),
            "ties": problem.ties, "events_train": float(problem.train[2].sum()),
            "correlations": {"vif": _corr(vif_estimate, loo), "if": _corr(if_estimate, loo),
                             "lifelines_delta_beta": _corr(lifelines_estimate, loo)},
            "paper_protocol": {
                "epochs": EPOCHS[dataset], "n_units": len(paper_units), "adam_grad_norm": adam_grad,
                "adam_vs_exact_beta_max_abs": float((beta_adam - problem.beta_hat).abs().max()),
                "vif_vs_paper_loo": _corr(vif_estimate[rows], paper),
                "exact_loo_vs_paper_loo": _corr(loo[rows], paper),
            },
            "eps_path": {str(eps): value for eps, value in eps_path.items()},
            "relative_error": {name: relative_error(value[:, :-1], loo[:, :-1]) for name, value in
                               (("vif", vif_estimate), ("if", if_estimate), ("lifelines_delta_beta", lifelines_estimate))},
            "seconds": seconds, "loo_exact_extrapolated": extrapolated,
            "loo_exact_timed_units": len(timing_units) if extrapolated else n_units,
            "loo_paper_extrapolated_from_units": 3,
            "speedup": {"vif_vs_loo_exact": t_loo / t_vif, "vif_vs_loo_paper": t_paper / t_vif,
                        "if_vs_loo_exact": t_loo / t_if},
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m vif reproduce cox``."""
    parser.add_argument("--dataset", choices=["support", "rotterdam", "metabric"], default="support",
                        help="survival dataset (metabric needs the file, see vif.datasets.survival.load_metabric)")
    parser.add_argument("--cache-dir", default=None, help="cache folder for LOO refits (default: none, all timed)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see torch_threads)")


def reproduce(*, quick: bool, seed: int, dataset: str = "support", cache_dir: str | None = None, threads: int = 1,
              **_: Any) -> dict:
    """Run the experiment on one dataset; JSON-serialisable summary (correlations, seconds, ratios, sizes)."""
    return run(dataset, quick=quick, seed=seed, cache_dir=cache_dir, threads=threads)["summary"]
