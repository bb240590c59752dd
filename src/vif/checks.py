"""Checks shared by influence, parameter_influence, trust and leave_one_out.

They build the :class:`~vif.problem.Problem` with precise errors and check that ``params`` is a minimiser.

**What is checked, and at what cost** (once per call; ``n_units`` masked gradients are the estimate's own cost):

* *Inputs* (:func:`build_problem`): params and data of one dtype, an objective that stays in torch, never
  writes into its mask or its params in place, returns a finite scalar, a target in the parameters' dtype
  (:class:`vif.target.Target`). Cost: two objective calls and one gradient.
* *A task's hooks* (:class:`vif.problem.Problem`): ``mask_gradient_differences`` and
  ``mask_change_gradient_differences`` against autodiff for two single-unit removals. Cost: two masked
  gradients and one call of each hook.
* *Stationarity* (:func:`check_stationary`, below). Cost: 8 masked gradients (one hook call with a hook);
  up to 64 when most probed removals do not change the gradient (hinge-type losses), plus one for the
  all-units change when none does.

**The stationarity check** (``on_unconverged``, ``stationarity_tol``). Every estimate assumes
``g(1) = grad L(theta_hat, 1) = 0``; a residual gradient shifts every step by ``-H^-1 g(1)``. Its size is
compared with the size of what is being estimated, the change of the gradient when one unit is removed::

    ratio = max|g(1)| / scale,   scale = median over probe units i with c_i > 0 of c_i,
    c_i = max|g(1_{-i}) - g(1)|   (8 evenly spaced probe units; c_i <= 16 eps max_j c_j counts as 0, and a
                                   non-finite c_i is left out)

so the rule is the same for a summed and a mean objective (both sides scale alike) and needs no knowledge
of the fit. The scale cannot vanish: with a hinge-type loss most removals change nothing (``c_i = 0``), so
when fewer than half the probes change the gradient, up to 64 units are probed; when none does, the scale is
the average change ``max|g(0) - g(1)| / n_units`` (all units removed at once); when that is 0 or not finite
too, ``params`` passes only if ``max|g(1)|`` is at the objective's rounding floor ``64 eps |L(theta, 1)| /
max(1, max|theta|)`` (an objective that ignores its mask ends here). Every error names the scale it used.

``ratio > stationarity_tol`` raises :class:`~vif.errors.NotAMinimiserError` (``on_unconverged="raise"``, the
default) or warns (``"warn"``). Default tolerances: ``1e-4`` in float64 (the estimates are then off by well
under 0.1% of a typical removal's effect; fits to ``max|grad| <= 1e-8`` pass with margin), ``1e-2`` in float32
(whose gradients carry rounding near ``1e-7`` times the objective's scale). In float32 the default also accepts
what :mod:`vif.fit` accepts: ``max|g(1)| <= vif.fit.default_gtol("newton", float32)`` (``1e-4``) as long as
``ratio <= 10`` (the offset ``-H^-1 g(1)``, shared by every removal, stays within ten typical effects; float32
refits at that tolerance carry the same offset). A float32 mean loss fitted by :func:`vif.fit.newton` stops
there with ``ratio`` up to about 2 at ``n_units = 5000`` while its estimates agree with float64's to ``1e-3``.
A fit with ``max|grad| = 1e-3`` on a summed float64 loss whose per-unit gradients are of order 0.1-1 fails.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.func import grad

from ._optimisers import default_gtol
from .errors import InputError, NotAMinimiserError, UnconvergedWarning
from .params import DTYPE_PATTERN, Params, flatten
from .problem import Problem, resolve_task
from .removals import Removals
from .solvers import Solve, make_solver

__all__ = ["build_problem", "check_stationary", "check_chunk_size", "stationarity_ratio", "Stationarity",
           "STATIONARITY_TOL", "ON_UNCONVERGED", "FLOAT32_FIT_RATIO"]

STATIONARITY_TOL = {torch.float64: 1e-4, torch.float32: 1e-2}
ON_UNCONVERGED = ("raise", "warn")
N_PROBES = 8
MAX_PROBES = 64
#: below float64, a gradient within vif.fit's default newton tolerance passes up to this ratio (module notes)
FLOAT32_FIT_RATIO = 10.0

_ESCAPE_PATTERN = re.compile(r"data pointer|numpy|\.item\(\)|item\b|requires grad|mutate a captured|in-place",
                             re.IGNORECASE)


def check_chunk_size(chunk_size: object) -> int:
    """``chunk_size`` must be a positive int."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive int (masks evaluated together), got {chunk_size!r}.")
    return chunk_size


def build_problem(objective: Callable, params: Params, n_units: int | None, vectorize: bool,
                  units: Sequence[int] | torch.Tensor | None, groups: Sequence | torch.Tensor | None,
                  hessian: object, damping: object, *, solver: bool = True
                  ) -> tuple[Problem, Removals, Solve | None]:
    """Resolve a task, build and check the :class:`Problem`, the removals and the solver.

    Raises :class:`InputError` naming the cause for: params and data of different dtypes, an objective that
    leaves torch (numpy, ``.item()``) or writes into its mask, empty ``units``.
    """
    objective, n_units, hook = resolve_task(objective, n_units)
    theta, _ = flatten(params)
    try:
        problem = Problem(objective, params, n_units, vectorize=vectorize, hook=hook)
    except InputError as error:
        cause = error.__cause__
        if cause is not None and DTYPE_PATTERN.search(str(cause)) and "must return" not in str(error):
            raise InputError(
                f"objective(params, mask) failed on a dtype mismatch: params are {theta.dtype} but the objective "
                f"computes with tensors of another dtype ({cause}). Build the data with the parameters' dtype "
                f"(e.g. X.to({theta.dtype})) or convert params; n_units is not the cause."
            ) from cause
        raise
    except RuntimeError as error:
        if _ESCAPE_PATTERN.search(str(error)):
            raise InputError(
                "objective(params, mask) cannot be differentiated with torch.func: it leaves torch (numpy, "
                f".item(), float()) or writes into an input in place ({error}). Keep the computation in torch "
                "operations and never modify mask or params in place (use mask * x, torch.where, params + 1)."
            ) from error
        raise
    removals = Removals.select(problem.n_units, problem.theta, units, groups)
    solve = make_solver(problem.full_objective, problem.theta, hessian, damping=damping) if solver else None
    return problem, removals, solve


class Stationarity(NamedTuple):
    """The stationarity rule's numbers: ``ratio = norm / scale`` and what ``scale`` is (``source``, in words)."""

    ratio: float
    norm: float
    scale: float
    source: str
    floor: bool = False  #: no removal changes the gradient: ``scale`` is the objective's rounding floor

    def limit(self, tol: float | None, dtype: torch.dtype) -> float:
        """The largest ``max|g(1)|`` the rule accepts at ``stationarity_tol = tol`` (``None``: the default).

        ``tol * scale``; with the default tolerance below float64 also what :mod:`vif.fit` accepts,
        ``min(default_gtol, FLOAT32_FIT_RATIO * scale)``; at the rounding floor, the floor itself.
        """
        if self.floor:
            return self.scale
        limit = (STATIONARITY_TOL.get(dtype, 1e-2) if tol is None else tol) * self.scale
        if tol is None and dtype != torch.float64:
            limit = max(limit, min(default_gtol("newton", dtype), FLOAT32_FIT_RATIO * self.scale))
        return limit


def _changes(flat_objective: Callable, theta: torch.Tensor, full_gradient: torch.Tensor, n_units: int,
             units: torch.Tensor, hook: Callable | None, unflatten: Callable | None) -> torch.Tensor:
    """``c_u = max|g(1_{-u}) - g(1)|`` for each unit ``u`` of ``units``: the hook's batch, else one gradient each."""
    masks = torch.ones(len(units), n_units, dtype=theta.dtype, device=theta.device)
    masks[torch.arange(len(units), device=theta.device), units] = 0.0
    if hook is not None and unflatten is not None:
        differences = hook(unflatten(theta), masks)
    else:
        gradient_at = grad(flat_objective)
        differences = torch.stack([gradient_at(theta, mask) for mask in masks]) - full_gradient
    return differences.abs().amax(dim=1)


def _spread(n_units: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` evenly spaced unit indices in ``0 .. n_units - 1`` (fewer when they coincide)."""
    return torch.linspace(0, n_units - 1, count, device=device).round().long().unique()


def stationarity_ratio(flat_objective: Callable, theta: torch.Tensor, full_gradient: torch.Tensor,
                       n_units: int, hook: Callable | None = None, unflatten: Callable | None = None) -> Stationarity:
    """The module's rule: ``ratio = max|g(1)| / scale`` with a scale that cannot vanish (module notes).

    ``ratio`` is ``inf`` when no removal changes the gradient and ``max|g(1)|`` is above the objective's rounding
    floor, ``0`` when it is at or below it.
    """
    def changes(units: torch.Tensor) -> torch.Tensor:
        return _changes(flat_objective, theta, full_gradient, n_units, units, hook, unflatten)

    probes = _spread(n_units, min(N_PROBES, n_units), theta.device)
    change = changes(probes)

    def nonzero() -> torch.Tensor:  # a removal with a non-finite gradient is no scale (the estimate reports it)
        finite = change.isfinite()
        top = float(change[finite].max()) if bool(finite.any()) else 0.0
        return finite & (change > 16 * torch.finfo(theta.dtype).eps * top) if top > 0 else torch.zeros_like(finite)

    if 2 * int(nonzero().sum()) < len(probes) and n_units > len(probes):
        more = _spread(n_units, min(MAX_PROBES, n_units), theta.device)
        more = more[~torch.isin(more, probes)]
        probes, change = torch.cat([probes, more]), torch.cat([change, changes(more)])
    norm = float(full_gradient.abs().max())
    kept = nonzero()
    if bool(kept.any()):
        scale = float(change[kept].median())
        return Stationarity(norm / scale, norm, scale, f"the median of max|g(1_-i) - g(1)| over the {int(kept.sum())} "
                            f"of {len(probes)} probe units whose removal changes the gradient")
    scale = _all_units_change(flat_objective, theta, full_gradient, n_units, hook, unflatten)
    if scale > 0:
        return Stationarity(norm / scale, norm, scale, f"no single removal of {len(probes)} probed units changes "
                            "the gradient; the average change max|g(0) - g(1)| / n_units")
    value = abs(float(flat_objective(theta, torch.ones(n_units, dtype=theta.dtype, device=theta.device))))
    floor = 64 * torch.finfo(theta.dtype).eps * value / max(1.0, float(theta.abs().max()))
    return Stationarity(0.0 if norm <= floor else float("inf"), norm, floor,
                        f"no removal changes the gradient (the {len(probes)} probed units one at a time, all units "
                        "at once): if the objective ignores its mask, make it use it; the scale is the objective's "
                        "rounding floor 64 eps |L(params, 1)| / max(1, max|params|)", floor=True)


def _all_units_change(flat_objective: Callable, theta: torch.Tensor, full_gradient: torch.Tensor, n_units: int,
                      hook: Callable | None, unflatten: Callable | None) -> float:
    """``max|g(0) - g(1)| / n_units`` (0 when the objective is not finite or fails with every unit removed)."""
    zeros = torch.zeros(1, n_units, dtype=theta.dtype, device=theta.device)
    try:
        if hook is not None and unflatten is not None:
            difference = hook(unflatten(theta), zeros)[0]
        else:
            difference = grad(flat_objective)(theta, zeros[0]) - full_gradient
    except (RuntimeError, ValueError, ArithmeticError):  # e.g. a mean over no units: not a scale
        return 0.0
    size = float(difference.abs().max()) / n_units
    return size if size < float("inf") else 0.0  # NaN and inf are not a scale


def check_stationary(problem: Problem, on_unconverged: str, tol: float | None, where: str) -> Stationarity:
    """Raise or warn when ``params`` is not a minimiser by the module's rule; returns the rule's numbers."""
    if on_unconverged not in ON_UNCONVERGED:
        raise InputError(f"on_unconverged must be one of {ON_UNCONVERGED}, got {on_unconverged!r}.")
    dtype = problem.theta.dtype
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0):
        raise InputError(f"stationarity_tol must be a positive number, got {tol!r}.")
    found = stationarity_ratio(problem.flat_objective, problem.theta, problem.full_gradient, problem.n_units,
                               problem.hooks.dense, problem.unflatten)
    if found.norm <= found.limit(tol, dtype):
        return found
    message = (
        f"{where}: params is not a minimiser of the objective: max|grad L(params, 1)| = {found.norm:.3e} is "
        f"{found.ratio:.1e} of the typical gradient change from removing one unit ({found.scale:.3e}: "
        f"{found.source}), above stationarity_tol = {STATIONARITY_TOL.get(dtype, 1e-2) if tol is None else tol:.0e} "
        f"({dtype}). Every estimate would carry an error of about that fraction of an effect. Fit tighter (e.g. "
        "vif.fit.newton or a smaller gtol), or pass on_unconverged='warn' (or a larger stationarity_tol) to proceed."
    )
    if on_unconverged == "raise":
        raise NotAMinimiserError(message)
    warnings.warn(message, UnconvergedWarning, stacklevel=3)
    return found
