"""The ranking experiment: VIF and the infinitesimal IF for removing an item, against leave-one-out.

Targets: the listwise losses of the test queries with the removed item masked out of each test list and
relevant set (mask-aware); a test query whose only relevant item is removed is excluded and counted. The
unmasked target (removed item left in the test lists) is computed too, to show why first-order
estimates cannot follow it. Estimates: the paper's VIF, VIF with the removed item's own parameters held
out of the step ("VIF-HO", ``unit_params`` in :func:`vif.influence`) and the infinitesimal IF. Ground
truth: exact warm-started LOO refits (:class:`vif.tasks.ranking.ListwiseRanking` warm refits, ``max|grad| <= 1e-10``). Used by
``python -m vif reproduce ranking`` and by ``book/04_ranking.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ..fit import lbfgs, minibatch_adam
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import correlations
from ..params import flatten
from ..solvers import CG, LiSSA, cholesky_solver
from ..tasks import ranking
from ..tasks.ranking_hessian import block_jacobi
from ..threads import torch_threads
from ._results import Comparison
from ._setups import RankingSetup
from ._setups import ranking_setup as setup
from ._setups import ranking_sizes as sizes

__all__ = ["METHODS", "RankingSetup", "sizes", "setup", "estimate", "exact_loo", "compare", "backends", "timings",
           "adam_refit", "add_arguments", "reproduce"]


def estimate(s: RankingSetup, *, method: str = "vif", masked: bool = True, held_out: bool = False,
             hessian: Any = None, **options: Any) -> torch.Tensor:
    """``(n_units, n_test)`` predicted changes of the test losses (``hessian`` defaults to the exact matrix).

    ``held_out=True``: VIF with the removed item's own parameters held out of the step
    (``unit_params=ranking.item_parameters(...)``, see :mod:`vif.influence`).
    """
    if hessian is None:
        hessian = s.task.hessian(s.params)
    if held_out:
        options["unit_params"] = ranking.item_parameters(s.data.n_items, s.data.X_train.shape[1])
    # chunk_size=1: batching masks with vmap over (queries x items) tensors was slower on CPU (measured
    # 2.2 s with 1, 4.3 s with 8, 8.3 s with 101 masks per chunk at the Mediamill shape), and it bounds memory
    return influence(s.task, s.params, s.target if masked else s.unmasked, method=method, hessian=hessian,
                     units=s.units, chunk_size=1, **options)


def exact_loo(
    s: RankingSetup, *, cache_dir: str | Path | None = None, progress: bool = True, hessian: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact warm-started LOO: ``(masked, unmasked)`` actual changes of the test losses, each ``(n_units, n_test)``.

    ``hessian``: the full-data Hessian or a solver for it, if already computed (the task's warm refits reuse it,
    see :class:`vif.tasks.ranking.ListwiseRanking`).
    """
    if hessian is not None:
        s.task.use_hessian(s.params, hessian)
    masked, thetas = leave_one_out(s.task, s.params, s.target, units=s.units, cache_dir=cache_dir, cache_key=s.key,
                                   progress=progress, return_params=True)
    _, unflatten = flatten(s.params)
    baseline = s.unmasked(s.params)
    unmasked = torch.stack([s.unmasked(unflatten(theta)) - baseline for theta in thetas])
    return masked, unmasked


METHODS = ("VIF", "VIF-HO", "IF")


def compare(
    s: RankingSetup, *, cache_dir: str | Path | None = None, progress: bool = True, unmasked: bool = True,
    hessian: torch.Tensor | None = None,
) -> Comparison:
    """VIF, VIF-HO and IF against exact LOO, masked (and, if ``unmasked``, unmasked) targets.

    Returns a :class:`Comparison`: ``estimates`` ``"VIF"``, ``"VIF-HO"``, ``"IF"`` (and ``"VIF_unmasked"``,
    ``"IF_unmasked"``) ``(n_units, n_test)``; ``truth`` ``"loo"`` and ``"loo_unmasked"``; ``correlations``: a
    :class:`vif.metrics.Correlations` per estimate, per test query (the masked ones over ``s.valid``);
    ``settings``: ``n_units``, ``n_excluded`` (invalid unit-query pairs). ``timings``: ``hessian`` (closed form,
    unless the caller passes the dense ``hessian`` it already built, and one Cholesky factor shared by every
    estimate and the refits), ``vif`` and ``held_out`` (each including the shared Hessian), ``loo`` (all exact
    refits; 0 when they come from the cache) and ``fit``.
    """
    start = time.perf_counter()
    solver = cholesky_solver(s.task.hessian(s.params) if hessian is None else hessian)
    hessian_seconds = time.perf_counter() - start
    seconds, predicted = {}, {}
    for name, options in [("VIF", {}), ("VIF-HO", dict(held_out=True)), ("IF", dict(method="if"))]:
        start = time.perf_counter()
        predicted[name] = estimate(s, hessian=solver, **options)
        seconds[name] = hessian_seconds + time.perf_counter() - start
    plain = {}
    if unmasked:  # VIF-HO holds the item's parameters fixed, which an unmasked target reads: not defined there
        plain = {"VIF_unmasked": estimate(s, masked=False, hessian=solver),
                 "IF_unmasked": estimate(s, method="if", masked=False, hessian=solver)}
    start = time.perf_counter()
    actual, actual_unmasked = exact_loo(s, cache_dir=cache_dir, progress=progress, hessian=solver)
    loo_seconds = time.perf_counter() - start
    scores = {name: correlations(values, actual, valid=s.valid) for name, values in predicted.items()}
    scores |= {name: correlations(values, actual_unmasked) for name, values in plain.items()}
    return Comparison(
        settings={"n_units": len(s.units), "n_excluded": int((~s.valid).sum())},
        estimates=predicted | plain, truth={"loo": actual, "loo_unmasked": actual_unmasked}, correlations=scores,
        timings={"hessian": hessian_seconds, "vif": seconds["VIF"], "held_out": seconds["VIF-HO"],
                 "loo": loo_seconds, "fit": s.fit_seconds}, setup=s)


def backends(s: RankingSetup, *, max_iter: int = 200, tol: float = 1e-6) -> list[dict[str, Any]]:
    """Exact solve, CG with and without block-Jacobi, and LiSSA on the same VIF-HO: seconds and accuracy.

    VIF-HO solves ``d + 2`` right-hand sides per item (the step and the item's Schur columns).
    Accuracy: largest error relative to the exact estimate's largest entry; iterative solvers warn (not
    raise) when they hit ``max_iter``, and the table shows how far they got.
    """
    import warnings

    rows = []
    start = time.perf_counter()
    H = s.task.hessian(s.params)
    exact = estimate(s, hessian=H, held_out=True)
    rows.append({"backend": "exact (closed-form H, Cholesky)", "seconds": time.perf_counter() - start, "rel_error": 0.0})
    del H
    jacobi = block_jacobi(s.data.X_train, s.data.Y_train, s.params, loss=s.loss, l2=s.l2)
    options = dict(tol=tol, max_iter=max_iter, on_nonconvergence="warn")
    for name, spec in [("CG", CG(**options)), ("CG + block-Jacobi", CG(preconditioner=jacobi, **options)),
                       ("LiSSA", LiSSA(**options))]:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = estimate(s, hessian=spec, held_out=True)
        error = float((values - exact).abs().max() / exact.abs().max())
        rows.append({"backend": name, "seconds": time.perf_counter() - start, "rel_error": error})
    return rows


def adam_refit(s: RankingSetup, mask: torch.Tensor, *, epochs: int, seed: int = 0) -> dict:
    """The paper's protocol: Adam (lr 1e-3, weight decay 5e-4 in the objective), batch 128, cold start (zeros)."""
    X, R = s.data.X_train, s.data.Y_train
    return minibatch_adam(lambda rows: ranking.objective(X[rows], R[rows], loss=s.loss, l2=s.l2),
                          ranking.init_params(X.shape[1], R.shape[1], X), mask, n_rows=len(X), epochs=epochs,
                          lr=1e-3, batch_size=128, seed=seed)


def timings(s: RankingSetup, *, n_timed: int = 3, epochs: int = 20) -> dict[str, float]:
    """Seconds of VIF-HO over all studied items, and of four LOO protocols (extrapolated), with ratios.

    ``vif``: VIF-HO from scratch (closed-form Hessian, Cholesky, every item). LOO protocols, each timed on
    ``n_timed`` items and scaled to ``len(units)``: warm-started L-BFGS (``vif.fit.lbfgs``, ``gtol = 1e-7``),
    warm-started Newton (:func:`vif.ranking.fit` from ``theta_hat``: closed-form Hessian rounds,
    ``gtol = 1e-10``), the paper's Adam protocol (``epochs`` epochs, cold start), and the exact refits of
    the ground truth (:meth:`vif.tasks.ranking.ListwiseRanking.fit`: L-BFGS preconditioned with the full-data Hessian,
    ``gtol = 1e-10``; its one-off Hessian and factorisation are counted once). ``lbfgs_evaluations``: mean
    objective-and-gradient evaluations per warm L-BFGS refit. ``vif_path``: which engine path produced ``vif``.
    """
    start = time.perf_counter()
    # the check that each item's parameters leave the model with it ran in compare() on these items; it is
    # a validation of the model's structure, not part of the estimate, and is not timed again
    estimate(s, held_out=True, check_unit_params=False)
    result: dict[str, Any] = {"vif": time.perf_counter() - start, "n_units": len(s.units)}
    hook = callable(getattr(s.task, "mask_gradient_differences", None))
    result["vif_path"] = ("the task's closed-form masked-gradient differences" if hook else
                          "autodiff masked gradients (one item per pass), the closed-form Hessian and one Cholesky factor")
    X, R = s.data.X_train, s.data.Y_train
    start = time.perf_counter()
    preconditioned = ranking.ListwiseRanking(X, R, loss=s.loss, l2=s.l2)
    preconditioned.use_hessian(s.params, preconditioned.hessian(s.params))
    setup_seconds = time.perf_counter() - start
    evaluations = [0]

    def counted_objective(params: dict, mask: torch.Tensor) -> torch.Tensor:
        evaluations[0] += 1
        return s.objective(params, mask)

    protocols = {
        "lbfgs_loo": lambda mask: lbfgs(counted_objective, s.params, mask, gtol=1e-7, max_iter=5000),
        "newton_loo": lambda mask: ranking.fit(X, R, loss=s.loss, l2=s.l2, mask=mask, init=s.params),
        "adam_loo": lambda mask: adam_refit(s, mask, epochs=epochs),
        "preconditioned_loo": lambda mask: preconditioned.fit(mask, s.params),
    }
    timed = s.units[:n_timed]
    for name, refit in protocols.items():
        start = time.perf_counter()
        for unit in timed:
            mask = X.new_ones(s.data.n_items)
            mask[unit] = 0.0
            refit(mask)
        result[name] = (time.perf_counter() - start) / len(timed) * len(s.units)
        result[f"{name}_ratio"] = result[name] / result["vif"]
    result["lbfgs_evaluations"] = evaluations[0] / len(timed)  # objective + gradient per refit
    result["preconditioned_loo"] += setup_seconds
    result["preconditioned_loo_ratio"] = result["preconditioned_loo"] / result["vif"]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m vif reproduce ranking``."""
    parser.add_argument("--dataset", default="mediamill-like",
                        help="mediamill-like (default), delicious-like, mediamill, delicious, or a folder with XMC files")
    parser.add_argument("--loss", default="all", choices=["all", *ranking.LOSSES], help="listwise loss (default all)")
    parser.add_argument("--cache-dir", default=None, help="folder for the LOO refit cache (default: none)")


def reproduce(*, quick: bool, seed: int, dataset: str = "mediamill-like", loss: str = "all",
              cache_dir: str | None = None) -> Comparison:
    """One part per loss (:func:`compare`: VIF, VIF-HO and IF against exact LOO, masked and unmasked targets)."""
    losses = ranking.LOSSES if loss == "all" else (loss,)
    parts = {}
    for name in losses:
        with torch_threads(1):
            s = setup(dataset, name, quick=quick, seed=seed)
            part = compare(s, cache_dir=cache_dir, progress=False, unmasked=s.data.n_items < 500)
        part.settings |= {"loss": name, "n_params": s.data.n_items * (s.data.X_train.shape[1] + 1),
                          "n_train": s.data.X_train.shape[0], "n_test": s.data.X_test.shape[0],
                          "synthetic": s.data.synthetic}
        parts[name] = part
    return Comparison(settings={"dataset": dataset, "quick": quick, "seed": seed}, parts=parts)
