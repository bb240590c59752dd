"""Brute-force leave-one-out (LOO) retraining: the ground truth every influence estimate is checked against.

``leave_one_out`` refits the model once per removed unit with ``fit(mask, init)``, where ``mask`` is
``1_{-i}``, and returns the *actual* change of the target. Finished refits are written to ``cache_dir``
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
from .influence import _takes_mask
from .params import Params, check_finite, flatten, removal_mask

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


def _refit(fit: Callable, params: Params, unit: int, n_units: int, warm_start: bool,
           objective: Callable | None, threads: int | None) -> tuple[int, torch.Tensor, dict[str, Any]]:
    """Refit without ``unit``; runs in a worker process. Returns (unit, flat parameters, metadata)."""
    if threads is not None:
        torch.set_num_threads(threads)
    theta_hat, _ = flatten(params)
    mask = removal_mask(n_units, unit, theta_hat)
    start = time.perf_counter()
    refitted = fit(mask, params if warm_start else None)
    seconds = time.perf_counter() - start
    theta, _ = flatten(refitted)
    check_finite(theta, f"the parameters refitted without unit {unit}")
    meta = {"unit": unit, "warm_start": warm_start, "seconds": seconds, "converged": True}
    if objective is not None:
        meta["grad_norm"] = gradient_norm(objective, refitted, mask)
    return unit, theta.detach().cpu(), meta


def _save(path: Path, theta: torch.Tensor, meta: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save({"theta": theta, "meta": meta}, temporary)
    os.replace(temporary, path)


def leave_one_out(
    fit: Callable[[torch.Tensor, Params | None], Params],
    params: Params,
    target: Callable,
    *,
    n_units: int,
    units: Sequence[int] | torch.Tensor | None = None,
    warm_start: bool = True,
    n_jobs: int = 1,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    objective: Callable | None = None,
    target_takes_mask: bool | None = None,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Actual change ``target(theta_without_i) - target(theta_hat)`` by refitting without each unit.

    Args:
        fit: ``fit(mask, init) -> params`` minimises the objective at ``mask``; ``init`` is ``theta_hat``
            when ``warm_start`` else ``None`` (then ``fit`` chooses its own cold start, e.g. a seeded one).
            It must raise if it does not converge. Must be picklable (closures are) when ``n_jobs != 1``.
        params: ``theta_hat``, the fit on the full data.
        target: ``target(params)`` or mask-aware ``target(params, mask)`` (scalar or ``(n_targets,)``); a
            mask-aware target is compared at the same mask: ``target(theta_-i, 1_-i) - target(theta_hat, 1_-i)``.
        n_units: length of the mask.
        units: optional subset of units (rows follow its order); default all.
        warm_start: start each refit from ``theta_hat`` (``True``) or from ``fit``'s cold start.
        n_jobs: joblib workers (``-1`` for all cores); each worker uses one torch thread.
        cache_dir: folder for per-unit results; ``None`` disables caching. The cache key is the bytes of
            ``theta_hat``, ``n_units``, ``warm_start``, the fit's qualified name and ``cache_key``: pass a
            ``cache_key`` that names anything else the fit depends on (data version, hyper-parameters).
        cache_key: extra string mixed into the cache key.
        progress: show a tqdm progress bar.
        objective: if given, the gradient norm of each refit is recorded in the cache metadata.
        target_takes_mask: override the detection of a mask-aware target from its signature.
        return_params: also return the refitted flat parameters.

    Returns:
        Tensor ``(n_selected_units,)`` for a scalar target, else ``(n_selected_units, n_targets)``; with
        ``return_params`` also ``(n_selected_units, n_params)``.
    """
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 1:
        raise InputError(f"n_units must be a positive int, got {n_units!r}.")
    theta_hat, unflatten = flatten(params)
    selected = list(range(n_units)) if units is None else [int(unit) for unit in torch.as_tensor(units).tolist()]
    if any(unit < 0 or unit >= n_units for unit in selected):
        raise InputError(f"units must lie in [0, {n_units}).")
    folder = None if cache_dir is None else _cache_folder(cache_dir, theta_hat, n_units, warm_start, fit, cache_key)
    refitted: dict[int, torch.Tensor] = {}
    if folder is not None:
        for unit in selected:
            path = folder / f"unit-{unit:06d}.pt"
            if path.exists():
                refitted[unit] = torch.load(path, weights_only=True)["theta"]
        if refitted:
            logger.info("leave_one_out: %d of %d refits loaded from %s", len(refitted), len(selected), folder)
    todo = [unit for unit in dict.fromkeys(selected) if unit not in refitted]
    threads = None if n_jobs == 1 else 1
    jobs = (joblib.delayed(_refit)(fit, params, unit, n_units, warm_start, objective, threads) for unit in todo)
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs) if todo else []
    for unit, theta, meta in tqdm(results, total=len(todo), disable=not progress or not todo, desc="LOO refits"):
        refitted[unit] = theta
        if folder is not None:
            _save(folder / f"unit-{unit:06d}.pt", theta, meta)

    mask_aware = _takes_mask(target, target_takes_mask)
    baseline = None if mask_aware else target(unflatten(theta_hat))
    changes, thetas = [], []
    for unit in selected:
        theta = refitted[unit].to(dtype=theta_hat.dtype, device=theta_hat.device)
        if mask_aware:
            mask = removal_mask(n_units, unit, theta_hat)
            change = target(unflatten(theta), mask) - target(unflatten(theta_hat), mask)
        else:
            change = target(unflatten(theta)) - baseline
        changes.append(check_finite(change.detach(), f"the target change after removing unit {unit}"))
        thetas.append(theta)
    result = torch.stack(changes)
    return (result, torch.stack(thetas)) if return_params else result
