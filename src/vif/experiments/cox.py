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
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.func import vmap

from ..fit import adam, gradient_norm
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import correlations, relative_error
from ..threads import torch_threads
from ._results import Comparison
from ._setups import QUICK_UNITS, CoxSetup
from ._setups import cox_setup as setup

__all__ = ["CoxSetup", "setup", "estimate", "lifelines_delta_beta", "exact_loo", "paper_loo", "run",
           "reproduce", "add_arguments", "speed", "EPOCHS", "QUICK_UNITS", "EPS_GRID"]

EPOCHS = {"support": 100, "rotterdam": 200, "metabric": 200, "gbsg2": 200}  # the paper's protocol
PAPER_UNITS = {True: 20, False: 400}  # units for the paper-protocol LOO (quick, full)
TIMING_UNITS = 100  # at most this many fresh refits timed when the LOO results come from a cache
EPS_GRID = (0.01, 0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def estimate(problem: CoxSetup, *, method: str = "vif", eps: float = 1.0, units: torch.Tensor | None = None) -> torch.Tensor:
    """``vif.influence`` on the setup's targets: ``(n_units, n_test + 1)``, predicted ``f(beta_-i) - f(beta_hat)``."""
    return influence(problem.task, problem.beta_hat, problem.target, method=method, eps=eps,
                     units=problem.units if units is None else units)


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


def exact_loo(problem: CoxSetup, *, units: torch.Tensor | None = None, cache_dir: str | Path | None = None,
              progress: bool = False) -> torch.Tensor:
    """Actual ``f(beta_-i) - f(beta_hat)`` by warm-started Newton refits, ``(n_units, n_test + 1)``."""
    return leave_one_out(problem.task, problem.beta_hat, problem.target,
                         units=problem.units if units is None else units, warm_start=True, cache_dir=cache_dir,
                         cache_key=f"cox-{problem.name}-{problem.ties}-newton", progress=progress)


def _mean_loss(problem: CoxSetup):
    """The paper's loss: the objective divided by the number of events kept (mean over events)."""
    data = problem.task.data
    events = data.event[torch.argsort(data.order)]  # event indicators, input row order

    def mean_loss(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return problem.objective(beta, mask) / (mask * events).sum()

    return mean_loss


def paper_loo(problem: CoxSetup, units: torch.Tensor, *, seed: int, chunk_size: int = 64
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The paper's protocol: Adam fits from one seeded cold start, on the full data and without each unit.

    Returns:
        ``(changes (n_units, n_test + 1), beta_adam (p,), max|grad|`` of the summed objective at ``beta_adam``).
    """
    p, n = problem.beta_hat.numel(), problem.n_train
    bound = 1 / math.sqrt(p)  # torch.nn.Linear's default initialisation
    generator = torch.Generator().manual_seed(seed)
    init = (torch.rand(p, generator=generator, dtype=torch.float64, device="cpu") * 2 - 1) * bound
    epochs, loss = EPOCHS[problem.name], _mean_loss(problem)
    full = adam(loss, init, torch.ones(1, n, dtype=torch.float64, device="cpu"), epochs=epochs, lr=0.01)[0]
    changes = []
    for chunk in torch.split(units, chunk_size):
        masks = torch.ones(len(chunk), n, dtype=torch.float64, device="cpu")
        masks[torch.arange(len(chunk), device="cpu"), chunk] = 0.0
        refits = adam(loss, init, masks, epochs=epochs, lr=0.01)
        changes.append(vmap(problem.target)(refits) - problem.target(full))
    grad_norm = gradient_norm(problem.objective, full, torch.ones(n, dtype=torch.float64, device="cpu"))
    return torch.cat(changes), full, grad_norm


def _corr(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, dict[str, float]]:
    """Mean Pearson/Spearman over test relative hazards, and for the test partial log-likelihood."""
    hazards = correlations(predicted[:, :-1], actual[:, :-1])
    loglik = correlations(predicted[:, -1], actual[:, -1])
    return {"hazard": {"pearson": hazards.pearson, "spearman": hazards.spearman},
            "test_loglik": {"pearson": loglik.pearson, "spearman": loglik.spearman}}


def speed(dataset: str = "support", *, n_train: int, n_targets: int = 200, seed: int = 0,
          loo_units: int | None = None, paper_units: int = 3, threads: int | None = 1) -> dict[str, Any]:
    """Seconds of every method on one training size, all units; LOO extrapolated from ``loo_units`` if given.

    Returns the sizes, ``seconds`` (vif, if, lifelines_delta_beta, loo_exact, loo_paper), ``speedup``, the
    process's peak resident memory after the VIF pass (``peak_rss_gb``, Linux ``ru_maxrss``) and ``paths``:
    which engine path produced the VIF and IF seconds.
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
    closed_form = callable(getattr(problem.task, "mask_change_gradient_differences", None))
    paths = {"vif": "closed-form event-group gradient differences (vif.tasks.cox_gradients)" if closed_form
             else "vmapped autodiff of the masked objective",
             "if": "mask Jacobian (one reverse pass per parameter)" if problem.beta_hat.numel() < len(problem.rows_test) + 1
             else "one reverse pass per target"}
    return {"n_train": problem.n_train, "paths": paths, "n_targets": len(problem.rows_test), "n_units": len(units),
            "loo_exact_timed_units": len(timed), "loo_paper_timed_units": paper_units, "peak_rss_gb": peak,
            "seconds": seconds, "speedup": {"vif_vs_loo_exact": t_loo / t_vif, "vif_vs_loo_paper": t_paper / t_vif,
                                             "if_vs_loo_exact": t_loo / t_if}}


def run(dataset: str, *, quick: bool, seed: int = 0, cache_dir: str | Path | None = None, progress: bool = False,
        eps_grid: tuple[float, ...] = EPS_GRID, threads: int | None = 1, **loader_options: Any) -> Comparison:
    """Everything the chapter and the CLI report for one dataset, as a :class:`Comparison`.

    ``estimates``: ``"vif"``, ``"if"``, ``"lifelines_delta_beta"``, each ``(n_units, n_test + 1)``; ``truth``:
    ``"loo"`` (exact warm Newton refits) and ``"paper_loo"`` (the paper's Adam protocol, on the rows
    ``tensors["paper_rows"]`` of the units); ``correlations[estimate]``: ``"hazard"`` and ``"test_loglik"``
    against exact LOO; ``timings``: seconds of every method; ``details``: the paper protocol's agreement, the
    ``eps`` path, relative errors and speed-ups.

    With ``cache_dir`` the exact LOO is read from (and written to) the cache, and its time is measured on
    ``TIMING_UNITS`` fresh refits and extrapolated (``loo_exact_extrapolated``); without, it is timed in full.
    ``threads``: torch intra-op threads for the whole run (see :func:`torch_threads`).
    """
    with torch_threads(threads):
        return _run(dataset, quick=quick, seed=seed, cache_dir=cache_dir, progress=progress, eps_grid=eps_grid,
                    **loader_options)


def _run(dataset: str, *, quick: bool, seed: int, cache_dir: str | Path | None, progress: bool,
         eps_grid: tuple[float, ...], **loader_options: Any) -> Comparison:
    problem = setup(dataset, quick=quick, seed=seed, **loader_options)
    units, n_units = problem.units, len(problem.units)
    vif_estimate, t_vif = _timed(estimate, problem, method="vif")
    if_estimate, t_if = _timed(estimate, problem, method="if")
    lifelines_estimate, t_lifelines = _timed(lifelines_delta_beta, problem)
    loo, t_loo = _timed(exact_loo, problem, cache_dir=cache_dir, progress=progress)
    extrapolated = cache_dir is not None
    if extrapolated:
        n_timed = min(TIMING_UNITS, max(10, n_units // 10))
        timing_units = units[torch.randperm(n_units, generator=torch.Generator().manual_seed(seed), device="cpu")[:n_timed]]
        _, t_part = _timed(exact_loo, problem, units=timing_units)
        t_loo = t_part * n_units / len(timing_units)
    order = torch.randperm(n_units, generator=torch.Generator().manual_seed(seed + 1), device="cpu")
    paper_units = units[order[:PAPER_UNITS[quick]]]
    paper, beta_adam, adam_grad = paper_loo(problem, paper_units, seed=seed)
    position = {int(u): k for k, u in enumerate(units)}
    rows = torch.tensor([position[int(u)] for u in paper_units], device="cpu")
    _, t_one = _timed(paper_loo, problem, paper_units[:3], seed=seed, chunk_size=1)  # sequential, as in the paper
    t_paper = t_one / 3 * n_units
    eps_path = {}
    for eps in eps_grid:
        predicted = vif_estimate if eps == 1.0 else estimate(problem, method="vif", eps=eps)  # eps = 1 is VIF
        eps_path[eps] = {"pearson": _corr(predicted, loo)["hazard"]["pearson"],
                         "relative_error": relative_error(predicted[:, :-1], loo[:, :-1])}
    seconds = {"vif": t_vif, "if": t_if, "lifelines_delta_beta": t_lifelines, "loo_exact": t_loo,
               "loo_paper": t_paper}
    estimates = {"vif": vif_estimate, "if": if_estimate, "lifelines_delta_beta": lifelines_estimate}
    return Comparison(
        settings={"dataset": dataset, "n_patients": problem.data.dataset.n, "n_train": problem.n_train,
                  "n_test": len(problem.rows_test), "n_units": n_units, "n_covariates": problem.beta_hat.numel(),
                  "ties": problem.ties, "events_train": float(problem.train[2].sum())},
        estimates=estimates, truth={"loo": loo, "paper_loo": paper},
        correlations={name: _corr(value, loo) for name, value in estimates.items()},
        timings=seconds,
        details={
            "paper_protocol": {
                "epochs": EPOCHS[dataset], "n_units": len(paper_units), "adam_grad_norm": adam_grad,
                "adam_vs_exact_beta_max_abs": float((beta_adam - problem.beta_hat).abs().max()),
                "vif_vs_paper_loo": _corr(vif_estimate[rows], paper),
                "exact_loo_vs_paper_loo": _corr(loo[rows], paper),
            },
            "eps_path": {str(eps): value for eps, value in eps_path.items()},
            "relative_error": {name: relative_error(value[:, :-1], loo[:, :-1]) for name, value in estimates.items()},
            "loo_exact_extrapolated": extrapolated,
            "loo_exact_timed_units": len(timing_units) if extrapolated else n_units,
            "loo_paper_extrapolated_from_units": 3,
            "speedup": {"vif_vs_loo_exact": t_loo / t_vif, "vif_vs_loo_paper": t_paper / t_vif,
                        "if_vs_loo_exact": t_loo / t_if},
        },
        setup=problem, tensors={"paper_rows": rows, "beta_adam": beta_adam})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m vif reproduce cox``."""
    parser.add_argument("--dataset", choices=["support", "rotterdam", "metabric"], default="support",
                        help="survival dataset (metabric needs the file, see vif.datasets.survival.load_metabric)")
    parser.add_argument("--cache-dir", default=None, help="cache folder for LOO refits (default: none, all timed)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see torch_threads)")


def reproduce(*, quick: bool, seed: int, dataset: str = "support", cache_dir: str | None = None, threads: int = 1,
              **_: Any) -> Comparison:
    """Run the experiment on one dataset (:func:`run`)."""
    return run(dataset, quick=quick, seed=seed, cache_dir=cache_dir, threads=threads)
