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
import types
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib
import torch
from tqdm import tqdm

from .checks import build_problem, check_stationary
from .errors import CacheWarning, InputError, RefitError, RefitWarning
from .fit import gradient_norm
from .params import Params, check_finite, flatten
from .removals import Removals
from .target import Target
from .task import is_task

__all__ = ["leave_one_out", "objective_fingerprint", "ON_ERROR"]

ON_ERROR = ("raise", "skip")

logger = logging.getLogger(__name__)


def _simple(value: object) -> object:
    """A JSON-able stand-in for a closure value or partial argument: numbers, strings, else the type name."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return type(value).__name__  # containers and objects: their contents may change between calls


def _fit_identity(fit: Callable) -> dict[str, Any]:
    """The fit's qualified name, a hash of its code, and its simple closure values / partial arguments."""
    function = getattr(fit, "func", fit)  # functools.partial
    function = getattr(function, "__func__", function)  # bound method
    code = getattr(function, "__code__", None)
    cells = [cell.cell_contents for cell in (getattr(function, "__closure__", None) or ()) if _has_contents(cell)]
    return {"name": f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}",
            "code": _code_digest(code) if code else None,
            "closure": [_simple(value) for value in cells],
            "partial": [[_simple(value) for value in getattr(fit, "args", ())],
                        sorted((key, _simple(value)) for key, value in (getattr(fit, "keywords", None) or {}).items())]}


def _code_digest(code: types.CodeType) -> str:
    """A hash of a function's bytecode, constants and global names, the same in every process.

    Nested functions are hashed recursively: the ``repr`` of a code object holds its memory address,
    which would give every process a new digest and leave every cached refit unused.
    """
    digest = hashlib.sha256(code.co_code)
    digest.update(repr(code.co_names).encode())
    for constant in code.co_consts:
        digest.update(_code_digest(constant).encode() if isinstance(constant, types.CodeType)
                      else repr(constant).encode())
    return digest.hexdigest()[:16]


def _has_contents(cell: object) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def objective_fingerprint(objective: Callable, params: Params, n_units: int, n_masks: int = 3) -> list[str]:
    """The objective's values at ``theta_hat`` under the full mask and ``n_masks`` fixed random masks (10 digits).

    Two objectives over different data (or with different hyper-parameters) give different values, so their
    refits never share a cache folder. The masks come from a seeded CPU generator (half the units kept).
    """
    theta, _ = flatten(params)
    generator = torch.Generator(device="cpu").manual_seed(0)
    masks = [torch.ones(n_units, dtype=theta.dtype, device="cpu")]
    masks += [(torch.rand(n_units, generator=generator, device="cpu") < 0.5).to(theta.dtype) for _ in range(n_masks)]
    values = []
    with torch.no_grad():
        for mask in masks:
            try:
                values.append(f"{float(objective(params, mask.to(theta.device))):.10g}")
            except Exception as error:  # noqa: BLE001 (a mask the objective rejects still identifies it)
                values.append(f"error: {type(error).__name__}")
    return values


def _cache_folder(cache_dir: str | os.PathLike, theta: torch.Tensor, n_units: int, warm_start: bool,
                  fit: Callable, cache_key: str | None, fingerprint: list[str] | None) -> Path:
    digest = hashlib.sha256()
    digest.update(theta.detach().cpu().contiguous().numpy().tobytes())
    description = {"n_units": n_units, "warm_start": warm_start, "fit": _fit_identity(fit),
                   "cache_key": cache_key, "dtype": str(theta.dtype), "n_params": theta.numel(),
                   "objective_fingerprint": fingerprint}
    digest.update(json.dumps(description, sort_keys=True).encode())
    folder = Path(cache_dir) / f"loo-{digest.hexdigest()[:20]}"
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "description.json", lambda path: path.write_text(json.dumps(description, indent=2,
                                                                                        sort_keys=True)))
    return folder


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file unique to this process and call, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _refit(fit: Callable, params: Params, removed: list[int], n_units: int, warm_start: bool,
           objective: Callable | None, gtol: float | None, threads: int | None
           ) -> tuple[tuple[int, ...], torch.Tensor | None, dict[str, Any]]:
    """Refit without the units ``removed``; runs in a worker process. Returns (key, flat parameters, metadata).

    Metadata: the removed units, ``seconds``, ``grad_norm`` (``max|grad|`` of the objective at the refit, when
    the objective is known) and ``converged`` (``grad_norm <= gtol`` when both are known, else ``None``). A
    failed refit returns ``None`` parameters and the error in ``meta["error"]``.
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
    _atomic_write(path, lambda temporary: torch.save({"theta": theta, "meta": meta}, temporary))


def _load(path: Path, removed: tuple[int, ...], n_params: int) -> torch.Tensor | None:
    """A cached refit, or ``None`` with a :class:`CacheWarning` naming the file.

    ``None`` when the entry is unreadable, truncated, or written for another removal or parameter shape.
    """
    try:
        entry = torch.load(path, weights_only=True)
        theta, meta = entry["theta"], entry["meta"]
        if not isinstance(theta, torch.Tensor) or theta.shape != (n_params,) or not theta.is_floating_point():
            raise ValueError(f"parameters of shape {tuple(getattr(theta, 'shape', ()))}, expected ({n_params},)")
        if [int(unit) for unit in meta["units"]] != list(removed):
            raise ValueError(f"written for unit(s) {meta['units']}, expected {list(removed)}")
        if not bool(torch.isfinite(theta).all()):
            raise ValueError("non-finite parameters")
    except Exception as error:  # noqa: BLE001 (any unreadable entry is recomputed)
        warnings.warn(f"leave_one_out: cache entry {path} is unusable ({type(error).__name__}: {error}); "
                      "recomputing it.", CacheWarning, stacklevel=3)
        return None
    return theta


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
    n_jobs: int = 1,
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
        fit: a task (:class:`vif.task.Task`: its ``fit``, ``objective``, ``n_units`` and ``gtol`` are used), or a
            bare ``fit(mask, init) -> params`` minimising the objective at ``mask``; ``init`` is ``theta_hat``
            when ``warm_start`` else ``None`` (then ``fit`` chooses its own cold start, e.g. a seeded one).
            It must raise if it does not converge. Must be picklable (closures are) when ``n_jobs != 1``.
        params: ``theta_hat``, the fit on the full data.
        target: ``target(params)`` or mask-aware ``target(params, mask)`` (scalar or ``(n_targets,)``); a
            mask-aware target is compared at the same mask: ``target(theta_-i, 1_-i) - target(theta_hat, 1_-i)``.
        n_units: length of the mask (taken from a task when omitted).
        units: optional non-empty subset of units (rows follow its order); default all.
        groups: refit without whole groups instead (as in :func:`vif.influence`); not with ``units``.
        warm_start: start each refit from ``theta_hat`` (``True``) or from ``fit``'s cold start.
        n_jobs: joblib workers (``-1`` for all cores); each worker uses one torch thread.
        cache_dir: folder for per-removal results; ``None`` disables caching. The folder is keyed by the bytes
            of ``theta_hat``, ``n_units``, ``warm_start``, the fit's identity (qualified name, a hash of its
            code, its simple closure values and partial arguments), ``cache_key`` and, when the objective is
            known (a task or ``objective=``), a fingerprint of the objective's values at ``theta_hat`` under the
            full mask and three fixed random masks (:func:`objective_fingerprint`): refits of a different
            dataset or objective never share entries. With a bare ``fit`` and no ``objective`` there is no
            fingerprint, and caching then requires an explicit ``cache_key`` naming the data and settings.
            Entries are written atomically under unique temporary names (several processes may share a
            folder); an unreadable, truncated or foreign entry is recomputed with a :class:`CacheWarning`.
        cache_key: extra string mixed into the cache key.
        progress: show a tqdm progress bar.
        objective: if given (or from a task), each refit's gradient norm is recorded in the cache metadata,
            ``params`` is checked to be a minimiser (see :mod:`vif.checks`) and the cache is fingerprinted.
        target_takes_mask: override the detection of a mask-aware target from its signature.
        return_params: also return the refitted flat parameters.
        on_error: ``"raise"`` (default): a failed refit raises :class:`RefitError` naming the unit after the
            refits already finished are cached; ``"skip"``: the other removals are returned, together with
            a bool tensor ``failed`` ``(n_removals,)`` marking the failed ones (their rows are NaN) and a
            :class:`RefitWarning` naming them.
        on_unconverged, stationarity_tol: the stationarity check of ``params`` (as in :func:`vif.influence`).

    Returns:
        Tensor ``(n_removals,)`` for a scalar target, else ``(n_removals, n_targets)``; with
        ``return_params`` also ``(n_removals, n_params)``; with ``on_error="skip"`` also ``failed`` (last).
    """
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
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
    checked_target = Target(target, theta_hat, unflatten, n_units, target_takes_mask)
    if objective is not None:
        check_stationary(build_problem(objective, params, n_units, True, None, None, "exact", 0.0, solver=False)[0],
                         on_unconverged, stationarity_tol, "vif.leave_one_out")
    folder = None
    if cache_dir is not None:
        if objective is None and cache_key is None:
            raise InputError(
                "cache_dir with a bare fit and no objective cannot tell datasets apart: pass objective= (the cache "
                "is then fingerprinted by its values) or a cache_key naming the data and settings."
            )
        fingerprint = None if objective is None else objective_fingerprint(objective, params, n_units)
        folder = _cache_folder(cache_dir, theta_hat, n_units, warm_start, fit, cache_key, fingerprint)
    refitted, failures = _run_refits(fit, params, removals, n_units, warm_start, objective, gtol, n_jobs, folder,
                                     progress, on_error)
    result, thetas = _changes(checked_target, removals, refitted)
    failed = torch.tensor([removed in failures for removed in removals], dtype=torch.bool, device="cpu")
    outputs = (result, thetas) if return_params else (result,)
    if on_error == "skip":
        return (*outputs, failed)
    return outputs if return_params else result


def _run_refits(fit: Callable, params: Params, removals: list[tuple[int, ...]], n_units: int, warm_start: bool,
                objective: Callable | None, gtol: float | None, n_jobs: int, folder: Path | None, progress: bool,
                on_error: str) -> tuple[dict[tuple[int, ...], torch.Tensor], dict[tuple[int, ...], str]]:
    """Load cached refits, run the rest (saving each as it finishes); returns ``(refitted, failures)``."""
    theta_hat, _ = flatten(params)
    refitted: dict[tuple[int, ...], torch.Tensor] = {}
    if folder is not None:
        for removed in dict.fromkeys(removals):
            path = folder / _entry_name(removed)
            if path.exists() and (theta := _load(path, removed, theta_hat.numel())) is not None:
                refitted[removed] = theta
        if refitted:
            logger.info("leave_one_out: %d of %d refits loaded from %s", len(refitted), len(removals), folder)
    todo = [removed for removed in dict.fromkeys(removals) if removed not in refitted]
    threads = None if n_jobs == 1 else 1
    jobs = (joblib.delayed(_refit)(fit, params, list(removed), n_units, warm_start, objective, gtol, threads)
            for removed in todo)
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs) if todo else []
    failures: dict[tuple[int, ...], str] = {}
    for removed, theta, meta in tqdm(results, total=len(todo), disable=not progress or not todo, desc="LOO refits"):
        if theta is None:
            name = f"unit {removed[0]}" if len(removed) == 1 else f"group {list(removed)}"
            if on_error == "raise":
                raise RefitError(f"leave_one_out: the refit without {name} failed ({meta['error']}). Refits finished "
                                 "so far are cached; fix the fit or pass on_error='skip' to get the others.")
            failures[removed] = meta["error"]
            continue
        refitted[removed] = theta
        if folder is not None:
            _save(folder / _entry_name(removed), theta, meta)
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
            changes.append(torch.full((target.n_targets,), float("nan"), dtype=theta_hat.dtype, device=theta_hat.device))
            thetas.append(torch.full_like(theta_hat, float("nan")))
            continue
        theta = refitted[removed].to(dtype=theta_hat.dtype, device=theta_hat.device)
        mask = target.ones.clone()
        mask[list(removed)] = 0.0
        changes.append(check_finite(target.change(theta, mask).detach(),
                                    f"the target change after removing unit(s) {list(removed)}"))
        thetas.append(theta)
    return target.shaped(torch.stack(changes)), torch.stack(thetas)
