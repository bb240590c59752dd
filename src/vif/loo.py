"""Brute-force leave-one-out (LOO) retraining: the ground truth every influence estimate is checked against.

``leave_one_out`` refits the model once per removed unit (or group) with the task's ``fit(mask, init)``,
where ``mask`` is ``1_{-i}``, and returns the *actual* change of the target. A refit is truth only if it is a
minimiser: when the objective is known, each refit's gradient is checked (below), and an unconverged refit, or a fit
that returned its start point without reaching the limit, raises :class:`~vif.errors.RefitError` (or is marked
failed). Finished refits are written to ``cache_dir`` one file per unit (atomically), in a folder keyed by a hash
of the data and every fit setting (:mod:`vif._loo_cache`), so an interrupted run resumes where it stopped.
Refits run in parallel through joblib: ``n_jobs`` processes with the default (loky) backend, or any
backend chosen with ``joblib.parallel_config`` (e.g. ``dask`` on a ``distributed.Client``).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import torch
from tqdm import tqdm

from ._loo_cache import (
    cache_folder,
    check_cache_dir,
    data_digest,
    entry_name,
    fit_identity,
    load,
    objective_fingerprint,
    save,
)
from .checks import STATIONARITY_TOL, Stationarity, build_problem, check_stationary
from .errors import CacheWarning, InputError, RefitError, RefitWarning
from .fit import default_gtol, gradient_norm
from .params import Params, check_finite, flatten
from .removals import Removals
from .target import Target
from .task import is_task

__all__ = ["leave_one_out", "objective_fingerprint", "ON_ERROR"]

ON_ERROR = ("raise", "skip")

logger = logging.getLogger(__name__)


GTOL_SLACK = 2.0  # a refit passes at max|grad| <= GTOL_SLACK * gtol: recomputing the gradient rounds differently


@dataclass(frozen=True)
class _Rule:
    """When a refit counts as a minimiser: ``max|grad L(theta_-i, 1_-i)| <= limit`` (``None``: no objective known)."""

    limit: float | None
    words: str = ""

    @classmethod
    def make(cls, gtol: float | None, found: Stationarity | None, tol: float | None, dtype: torch.dtype) -> _Rule:
        """The task's ``gtol`` (times :data:`GTOL_SLACK`), else the stationarity rule of :mod:`vif.checks`.

        ``found``: the rule's numbers at ``theta_hat`` (from its check; ``None`` without an objective).
        """
        if gtol is not None:
            return cls(GTOL_SLACK * gtol, f"the task's gtol = {gtol:.1e}")
        if found is None:
            return cls(None)
        if found.floor:  # no removal changes the gradient: a refit is theta_hat, up to the fit's tolerance
            limit = max(found.scale, default_gtol("newton", dtype))
            return cls(limit, f"{limit:.1e} ({found.source}; no gtol is known)")
        limit = found.limit(tol, dtype)
        tol = STATIONARITY_TOL.get(dtype, 1e-2) if tol is None else tol
        return cls(limit, f"{limit:.1e}: stationarity_tol = {tol:.0e} of the typical gradient change from removing "
                          f"one unit ({found.scale:.3e}: {found.source}; a task's gtol sets the limit instead)")


def _refit(fit: Callable, params: Params, removed: list[int], n_units: int, warm_start: bool,
           objective: Callable | None, rule: _Rule, threads: int | None
           ) -> tuple[tuple[int, ...], torch.Tensor | None, dict[str, Any]]:
    """Refit without the units ``removed``; runs in a worker process. Returns (key, flat parameters, metadata).

    Metadata: the removed units, ``seconds``, ``unchanged`` (the fit returned ``theta_hat`` itself),
    ``grad_norm`` (``max|grad|`` of the objective at the refit, when the objective is known) and ``converged``
    (``grad_norm <= rule.limit``; ``None`` without objective). A failed or unconverged refit returns ``None``
    parameters and the reason in ``meta["error"]``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    theta_hat, _ = flatten(params)
    mask = torch.ones(n_units, dtype=theta_hat.dtype, device=theta_hat.device)
    mask[removed] = 0.0
    start = time.perf_counter()
    meta: dict[str, Any] = {"units": removed, "warm_start": warm_start, "grad_norm": None, "converged": None}
    try:
        refitted = fit(mask, params if warm_start else None)
        theta, _ = flatten(refitted)
        check_finite(theta, f"the parameters refitted without unit(s) {removed}")
        if theta.shape != theta_hat.shape:
            raise InputError(f"fit returned {theta.numel()} parameters, theta_hat has {theta_hat.numel()}.")
    except Exception as error:  # noqa: BLE001 (reported to the caller with the unit, see on_error)
        meta.update(seconds=time.perf_counter() - start, error=f"{type(error).__name__}: {error}")
        return tuple(removed), None, meta
    meta["seconds"] = time.perf_counter() - start
    meta["unchanged"] = bool(torch.equal(theta.detach(), theta_hat.detach()))
    if objective is not None:
        meta["grad_norm"] = norm = gradient_norm(objective, refitted, mask)
        meta["converged"] = converged = rule.limit is None or norm <= rule.limit
        if not converged:
            what = ("the fit returned its start point theta_hat unchanged (it did nothing)" if meta["unchanged"]
                    else "not a minimiser")
            meta["error"] = (f"{what}: max|grad L(refit, mask)| = {norm:.3e} is above {rule.words}; refit tighter "
                             "(a smaller tolerance, more iterations) and check that fit uses its mask")
            return tuple(removed), None, meta
    return tuple(removed), theta.detach().cpu(), meta


def _removal_sets(n_units: int, units: Sequence[int] | torch.Tensor | None, groups: Sequence | torch.Tensor | None
                  ) -> list[tuple[int, ...]]:
    """The removed units of every row, parsed and checked by :class:`vif.removals.Removals` (as the estimates are)."""
    removals = Removals.select(n_units, torch.zeros(1, dtype=torch.float64, device="cpu"), units, groups)
    return [tuple(removals.members(row).tolist()) for row in range(len(removals))]


def leave_one_out(
    fit: Callable[[torch.Tensor, Params | None], Params] | Any,
    params: Params,
    target: Callable,
    *,
    n_units: int | None = None,
    units: Sequence[int] | torch.Tensor | None = None,
    groups: Sequence | torch.Tensor | None = None,
    warm_start: bool = True,
    n_jobs: int | None = 1,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    objective: Callable | None = None,
    target_takes_mask: bool | None = None,
    return_params: bool = False,
    on_error: str = "raise",
    on_unconverged: str = "raise",
    stationarity_tol: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Actual change ``target(theta_without_i) - target(theta_hat)`` by refitting without each unit (or group).

    Args:
        fit: a task (:class:`vif.task.Task`: its ``fit``, ``objective``, ``n_units`` and ``gtol`` are used; a
            task's ``fit`` method passed alone brings its ``gtol`` too), or a bare ``fit(mask, init) -> params``
            minimising the objective at ``mask``; ``init`` is ``theta_hat`` when ``warm_start`` else ``None``
            (then ``fit`` chooses its own cold start, e.g. a seeded one).
            It must raise if it does not converge. Must be picklable (closures are) when ``n_jobs != 1``.
        params: ``theta_hat``, the fit on the full data.
        target: ``target(params)`` or mask-aware ``target(params, mask)`` (scalar or ``(n_targets,)``); a
            mask-aware target is compared at the same mask: ``target(theta_-i, 1_-i) - target(theta_hat, 1_-i)``.
        n_units: length of the mask (taken from a task when omitted).
        units: optional non-empty subset of units (rows follow its order); default all.
        groups: refit without whole groups instead (as in :func:`vif.influence`); not with ``units``.
        warm_start: start each refit from ``theta_hat`` (``True``) or from ``fit``'s cold start.
        n_jobs: joblib workers (``-1`` for all cores, ``None``: joblib's default); each worker uses one torch
            thread. ``0`` raises :class:`InputError`.
        cache_dir: folder for per-removal results; ``None`` disables caching. The folder is keyed by the bytes
            of ``theta_hat``, ``n_units``, ``warm_start``, the task's ``gtol``, ``cache_key`` and a hash of the
            fit and the objective: their code and the contents of everything they read (the task's public
            attributes and dataclass fields, nested configs, closure cells, defaults, partial arguments and the
            globals their code names: every tensor, array and number, recursively; see :mod:`vif._loo_cache`),
            plus the objective's values under four fixed masks (:func:`objective_fingerprint`). Other data (a
            swapped row), another tolerance or another config value give another folder. With a bare ``fit``
            and no ``objective``, caching requires an explicit ``cache_key`` naming the data and settings.
            Entries are written atomically under unique temporary names (several processes may share a
            folder); an unreadable, truncated, foreign or unconverged entry is recomputed with a
            :class:`CacheWarning`. A ``cache_dir`` that is a file or cannot be written raises
            :class:`InputError` before any refit; a write that fails later (disk full) warns with a
            :class:`CacheWarning` and the results are still returned (uncached).
        cache_key: extra string mixed into the cache key.
        progress: show a tqdm progress bar.
        objective: if given (or from a task), ``params`` is checked to be a minimiser (see :mod:`vif.checks`)
            and so is every refit, at its mask: ``max|grad L(theta_-i, 1_-i)|`` must be at most
            ``GTOL_SLACK * gtol`` (2x the task's ``gtol``: the gradient's rounding when recomputed) or, when no
            ``gtol`` is known, ``stationarity_tol`` times the median single-removal gradient change at
            ``theta_hat`` (the rule of :mod:`vif.checks`). A refit above it, e.g. a fit that returned its start
            point ``theta_hat`` unchanged, fails (``on_error``); the gradient norm and verdict are recorded in
            the cache. Cost: one gradient per refit, plus the rule's probes at ``theta_hat`` without ``gtol`` (8
            masked gradients, up to 64 for hinge-type losses).
            Without an objective refits are not checked, and a refit equal to ``theta_hat`` warns
            (:class:`RefitWarning`).
        target_takes_mask: override the detection of a mask-aware target from its signature.
        return_params: also return the refitted flat parameters.
        on_error: ``"raise"`` (default): a failed or unconverged refit raises :class:`RefitError` naming the unit
            (and the gradient norm) after the refits already finished are cached; ``"skip"``: the other removals
            are returned, together with a bool tensor ``failed`` ``(n_removals,)`` marking the failed ones (their
            rows are NaN: score with ``vif.metrics.correlations(predicted, actual, valid=~failed)``) and a
            :class:`RefitWarning` naming them.
        on_unconverged: the stationarity check of ``params`` (as in :func:`vif.influence`).
        stationarity_tol: the tolerance of that check, and of every refit's when the task has no ``gtol``.

    Returns:
        Tensor ``(n_removals,)`` for a scalar target, else ``(n_removals, n_targets)``; with
        ``return_params`` also ``(n_removals, n_params)``; with ``on_error="skip"`` also ``failed`` (last).
    """
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0):
        raise InputError(f"n_jobs must be a nonzero int (1: serial, k > 1: k worker processes, -1: all cores), got "
                         f"{n_jobs!r}.")
    cache_path = None if cache_dir is None else check_cache_dir(cache_dir)
    gtol = None
    if is_task(fit):
        task = fit
        n_units = task.n_units if n_units is None else n_units
        objective = task.objective if objective is None else objective
        gtol = getattr(task, "gtol", None)
        fit = task.fit
    elif is_task(owner := getattr(fit, "__self__", None)) and getattr(fit, "__name__", None) == "fit":
        gtol = getattr(owner, "gtol", None)  # task.fit passed bare: its task's tolerance still applies
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 1:
        raise InputError(f"n_units must be a positive int, got {n_units!r}.")
    theta_hat, unflatten = flatten(params)
    removals = _removal_sets(n_units, units, groups)
    checked_target = Target(target, theta_hat, unflatten, n_units, target_takes_mask)
    found = None
    if objective is not None:
        problem = build_problem(objective, params, n_units, True, None, None, "exact", 0.0, solver=False)[0]
        found = check_stationary(problem, on_unconverged, stationarity_tol, "vif.leave_one_out")
    rule = _Rule.make(gtol, found, stationarity_tol, theta_hat.dtype)
    folder = None
    if cache_path is not None:
        if objective is None and cache_key is None:
            raise InputError(
                "cache_dir with a bare fit and no objective cannot tell datasets apart: pass objective= (the cache "
                "is then fingerprinted by its values) or a cache_key naming the data and settings."
            )
        description = {"n_units": n_units, "warm_start": warm_start, "fit": fit_identity(fit), "cache_key": cache_key,
                       "dtype": str(theta_hat.dtype), "n_params": theta_hat.numel(), "gtol": gtol,
                       "objective": _objective_digest(objective, fit),
                       "objective_fingerprint": None if objective is None else objective_fingerprint(
                           objective, params, n_units)}
        folder = cache_folder(cache_path, description, theta_hat)
    refitted, failures = _run_refits(fit, params, removals, n_units, warm_start, objective, rule, n_jobs, folder,
                                     progress, on_error)
    result, thetas = _changes(checked_target, removals, refitted)
    failed = torch.tensor([removed in failures for removed in removals], dtype=torch.bool, device="cpu")
    outputs = (result, thetas) if return_params else (result,)
    if on_error == "skip":
        return (*outputs, failed)
    return outputs if return_params else result


def _objective_digest(objective: Callable | None, fit: Callable) -> str | None:
    """The objective's part of the cache key; a method of the fit's own object (a task) is already in the fit's."""
    owner = getattr(objective, "__self__", None)
    if owner is not None and owner is getattr(fit, "__self__", None):
        return f"a method of the fit's object: {getattr(objective, '__name__', '?')}"
    return None if objective is None else data_digest(objective)


def _name(removed: tuple[int, ...]) -> str:
    return f"unit {removed[0]}" if len(removed) == 1 else f"group {list(removed)}"


def _run_refits(fit: Callable, params: Params, removals: list[tuple[int, ...]], n_units: int, warm_start: bool,
                objective: Callable | None, rule: _Rule, n_jobs: int | None, folder: Path | None, progress: bool,
                on_error: str) -> tuple[dict[tuple[int, ...], torch.Tensor], dict[tuple[int, ...], str]]:
    """Load cached refits, run the rest (saving each as it finishes); returns ``(refitted, failures)``."""
    theta_hat, _ = flatten(params)
    refitted: dict[tuple[int, ...], torch.Tensor] = {}
    if folder is not None:
        for removed in dict.fromkeys(removals):
            path = folder / entry_name(removed)
            if path.exists() and (theta := load(path, removed, theta_hat.numel())) is not None:
                refitted[removed] = theta
        if refitted:
            logger.info("leave_one_out: %d of %d refits loaded from %s", len(refitted), len(removals), folder)
    todo = [removed for removed in dict.fromkeys(removals) if removed not in refitted]
    threads = None if n_jobs == 1 else 1
    jobs = (joblib.delayed(_refit)(fit, params, list(removed), n_units, warm_start, objective, rule, threads)
            for removed in todo)
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs) if todo else []
    failures: dict[tuple[int, ...], str] = {}
    unchecked: list[tuple[int, ...]] = []
    for removed, theta, meta in tqdm(results, total=len(todo), disable=not progress or not todo, desc="LOO refits"):
        if theta is None:
            if on_error == "raise":
                raise RefitError(f"leave_one_out: the refit without {_name(removed)} failed ({meta['error']}). Refits "
                                 "finished so far are cached; fix the fit or pass on_error='skip' to get the others.")
            failures[removed] = meta["error"]
            continue
        refitted[removed] = theta
        if meta["unchanged"] and objective is None:
            unchecked.append(removed)
        if folder is not None:
            try:
                save(folder / entry_name(removed), theta, meta)
            except OSError as error:
                warnings.warn(f"leave_one_out: cannot write the cache entry {folder / entry_name(removed)} "
                              f"({type(error).__name__}: {error}); the results are returned but this and the "
                              "remaining refits are not cached. Free disk space or pass another cache_dir.",
                              CacheWarning, stacklevel=3)
                folder = None
    if unchecked:
        warnings.warn(f"leave_one_out: the fit returned theta_hat itself for {len(unchecked)} removal(s) (first: "
                      f"{_name(unchecked[0])}): it may have done nothing, which cannot be checked without the "
                      "objective. Pass objective= (or a task) to check every refit's gradient.",
                      RefitWarning, stacklevel=3)
    if failures:
        warnings.warn(f"leave_one_out: {len(failures)} refit(s) failed and are marked in `failed` (NaN rows): "
                      + "; ".join(f"{list(key)}: {error}" for key, error in list(failures.items())[:5]),
                      RefitWarning, stacklevel=3)
    return refitted, failures


def _changes(target: Target, removals: list[tuple[int, ...]], refitted: dict[tuple[int, ...], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Target changes ``(n_removals, ...)`` and refitted parameters; NaN rows for removals not in ``refitted``."""
    theta_hat = target.theta
    changes, thetas = [], []
    for removed in removals:
        if removed not in refitted:
            changes.append(torch.full((target.n_targets,), float("nan"), dtype=theta_hat.dtype,
                                      device=theta_hat.device))
            thetas.append(torch.full_like(theta_hat, float("nan")))
            continue
        theta = refitted[removed].to(dtype=theta_hat.dtype, device=theta_hat.device)
        mask = target.ones.clone()
        mask[list(removed)] = 0.0
        changes.append(check_finite(target.change(theta, mask).detach(),
                                    f"the target change after removing unit(s) {list(removed)}"))
        thetas.append(theta)
    return target.shaped(torch.stack(changes)), torch.stack(thetas)
