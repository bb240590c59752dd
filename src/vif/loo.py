"""Brute-force leave-one-out (LOO) retraining: the ground truth every influence estimate is checked against.

``leave_one_out`` refits the model once per removed unit (or group) with the task's ``fit(mask, init)``,
where ``mask`` is ``1_{-i}``, and returns the *actual* change of the target. Finished refits are written to ``cache_dir``
one file per unit (atomically), keyed by their inputs, so an interrupted run resumes where it stopped.
Refits run in parallel through joblib: ``n_jobs`` processes with the default (loky) backend, or any
backend chosen with ``joblib.parallel_config`` (e.g. ``dask`` on a ``distributed.Client``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib
import torch
from tqdm import tqdm

from .errors import InputError
from .fit import gradient_norm
from .params import Params, check_finite, flatten
from .problem import takes_mask
from .removals import as_groups
from .task import is_task

__all__ = ["leave_one_out"]

logger = logging.getLogger(__name__)


def _fit_name(fit: Callable) -> str:
    function = getattr(fit, "func", fit)  # functools.partial
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"


def _cache_folder(cache_dir: str | os.PathLike, theta: torch.Tensor, n_units: int, warm_start: bool,
                  fit: Callable, cache_key: str | None) -> Path:
    digest = hashlib.sha256()
    digest.update(theta.detach().cpu().contiguous().numpy().tobytes())
    description = {"n_units": n_units, "warm_start": warm_start, "fit": _fit_name(fit),
                   "cache_key": cache_key, "dtype": str(theta.dtype), "n_params": theta.numel()}
    digest.update(json.dumps(description, sort_keys=True).encode())
    folder = Path(cache_dir) / f"loo-{digest.hexdigest()[:20]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "description.json").write_text(json.dumps(description, indent=2, sort_keys=True))
    return folder


def _refit(fit: Callable, params: Params, removed: list[int], n_units: int, warm_start: bool,
           objective: Callable | None, gtol: float | None, threads: int | None
           ) -> tuple[tuple[int, ...], torch.Tensor, dict[str, Any]]:
    """Refit without the units ``removed``; runs in a worker process. Returns (key, flat parameters, metadata).

    Metadata: the removed units, ``seconds``, ``grad_norm`` (``max|grad|`` of the objective at the refit, when
    the objective is known) and ``converged`` (``grad_norm <= gtol`` when both are known, else ``None``).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    theta_hat, _ = flatten(params)
    mask = torch.ones(n_units, dtype=theta_hat.dtype, device=theta_hat.device)
    mask[removed] = 0.0
    start = time.perf_counter()
    refitted = fit(mask, params if warm_start else None)
    seconds = time.perf_counter() - start
    theta, _ = flatten(refitted)
    check_finite(theta, f"the parameters refitted without unit(s) {removed}")
    meta: dict[str, Any] = {"units": removed, "warm_start": warm_start, "seconds": seconds,
                            "grad_norm": None, "converged": None}
    if objective is not None:
        meta["grad_norm"] = gradient_norm(objective, refitted, mask)
        if gtol is not None:
            meta["converged"] = bool(meta["grad_norm"] <= gtol)
    return tuple(removed), theta.detach().cpu(), meta


def _entry_name(removed: tuple[int, ...]) -> str:
    if len(removed) == 1:
        return f"unit-{removed[0]:06d}.pt"
    return f"group-{hashlib.sha256(json.dumps(list(removed)).encode()).hexdigest()[:20]}.pt"


def _save(path: Path, theta: torch.Tensor, meta: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save({"theta": theta, "meta": meta}, temporary)
    os.replace(temporary, path)


def _removal_sets(n_units: int, units: Sequence[int] | torch.Tensor | None, groups: Sequence | torch.Tensor | None
                  ) -> list[tuple[int, ...]]:
    if units is not None and groups is not None:
        raise InputError("Pass units= (single removals) or groups= (group removals), not both.")
    if groups is not None:
        return [tuple(group.tolist()) for group in as_groups(groups, n_units, torch.device("cpu"))]
    selected = list(range(n_units)) if units is None else [int(unit) for unit in torch.as_tensor(units).tolist()]
    if any(unit < 0 or unit >= n_units for unit in selected):
        raise InputError(f"units must lie in [0, {n_units}).")
    return [(unit,) for unit in selected]


def leave_one_out(
    fit: Callable[[torch.Tensor, Params | None], Params] | Any,
    params: Params,
    target: Callable,
    *,
    n_units: int | None = None,
    units: Sequence[int] | torch.Tensor | None = None,
    groups: Sequence | torch.Tensor | None = None,
    warm_start: bool = True,
    n_jobs: int = 1,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    objective: Callable | None = None,
    target_takes_mask: bool | None = None,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Actual change ``target(theta_without_i) - target(theta_hat)`` by refitting without each unit (or group).

    Args:
        fit: a task (:class:`vif.task.Task`: its ``fit``, ``objective``, ``n_units`` and ``gtol`` are used), or a
            bare ``fit(mask, init) -> params`` minimising the objective at ``mask``; ``init`` is ``theta_hat``
            when ``warm_start`` else ``None`` (then ``fit`` chooses its own cold start, e.g. a seeded one).
            It must raise if it does not converge. Must be picklable (closures are) when ``n_jobs != 1``.
        params: ``theta_hat``, the fit on the full data.
        target: ``target(params)`` or mask-aware ``target(params, mask)`` (scalar or ``(n_targets,)``); a
            mask-aware target is compared at the same mask: ``target(theta_-i, 1_-i) - target(theta_hat, 1_-i)``.
        n_units: length of the mask (taken from a task when omitted).
        units: optional subset of units (rows follow its order); default all.
        groups: refit without whole groups instead (as in :func:`vif.influence`); not with ``units``.
        warm_start: start each refit from ``theta_hat`` (``True``) or from ``fit``'s cold start.
        n_jobs: joblib workers (``-1`` for all cores); each worker uses one torch thread.
        cache_dir: folder for per-removal results; ``None`` disables caching. The cache key is the bytes of
            ``theta_hat``, ``n_units``, ``warm_start``, the fit's qualified name and ``cache_key``: pass a
            ``cache_key`` that names anything else the fit depends on (data version, hyper-parameters).
        cache_key: extra string mixed into the cache key.
        progress: show a tqdm progress bar.
        objective: if given (or from a task), each refit's gradient norm is recorded in the cache metadata.
        target_takes_mask: override the detection of a mask-aware target from its signature.
        return_params: also return the refitted flat parameters.

    Returns:
        Tensor ``(n_removals,)`` for a scalar target, else ``(n_removals, n_targets)``; with
        ``return_params`` also ``(n_removals, n_params)``.
    """
    gtol = None
    if is_task(fit):
        task = fit
        n_units = task.n_units if n_units is None else n_units
        objective = task.objective if objective is None else objective
        gtol = getattr(task, "gtol", None)
        fit = task.fit
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 1:
        raise InputError(f"n_units must be a positive int, got {n_units!r}.")
    theta_hat, unflatten = flatten(params)
    removals = _removal_sets(n_units, units, groups)
    folder = None if cache_dir is None else _cache_folder(cache_dir, theta_hat, n_units, warm_start, fit, cache_key)
    refitted: dict[tuple[int, ...], torch.Tensor] = {}
    if folder is not None:
        for removed in removals:
            path = folder / _entry_name(removed)
            if path.exists():
                refitted[removed] = torch.load(path, weights_only=True)["theta"]
        if refitted:
            logger.info("leave_one_out: %d of %d refits loaded from %s", len(refitted), len(removals), folder)
    todo = [removed for removed in dict.fromkeys(removals) if removed not in refitted]
    threads = None if n_jobs == 1 else 1
    jobs = (joblib.delayed(_refit)(fit, params, list(removed), n_units, warm_start, objective, gtol, threads)
            for removed in todo)
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs) if todo else []
    for removed, theta, meta in tqdm(results, total=len(todo), disable=not progress or not todo, desc="LOO refits"):
        refitted[removed] = theta
        if folder is not None:
            _save(folder / _entry_name(removed), theta, meta)

    mask_aware = takes_mask(target, target_takes_mask)
    baseline = None if mask_aware else target(unflatten(theta_hat))
    changes, thetas = [], []
    for removed in removals:
        theta = refitted[removed].to(dtype=theta_hat.dtype, device=theta_hat.device)
        if mask_aware:
            mask = torch.ones(n_units, dtype=theta_hat.dtype, device=theta_hat.device)
            mask[list(removed)] = 0.0
            change = target(unflatten(theta), mask) - target(unflatten(theta_hat), mask)
        else:
            change = target(unflatten(theta)) - baseline
        changes.append(check_finite(change.detach(), f"the target change after removing unit(s) {list(removed)}"))
        thetas.append(theta)
    result = torch.stack(changes)
    return (result, torch.stack(thetas)) if return_params else result
