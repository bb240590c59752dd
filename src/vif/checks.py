"""Checks shared by influence, parameter_influence, trust and leave_one_out.

They build the :class:`~vif.problem.Problem` with precise errors and check that ``params`` is a minimiser.

**The stationarity check** (``on_unconverged``, ``stationarity_tol``). Every estimate assumes
``g(1) = grad L(theta_hat, 1) = 0``; a residual gradient shifts every step by ``-H^-1 g(1)``. Its size is
compared with the size of what is being estimated, the change of the gradient when one unit is removed::

    ratio = max|g(1)| / median_i max|g(1_{-i}) - g(1)|     over up to 8 probe units (evenly spaced indices)

so the rule is the same for a summed and a mean objective (both sides scale alike) and needs no knowledge
of the fit. ``ratio > stationarity_tol`` raises :class:`~vif.errors.NotAMinimiserError` (``on_unconverged=
"raise"``, the default) or warns (``"warn"``). Default tolerances: ``1e-4`` in float64 (the estimates are
then off by well under 0.1% of a typical removal's effect; fits to ``max|grad| <= 1e-8`` pass with margin),
``1e-2`` in float32 (whose gradients carry rounding near ``1e-7`` times the objective's scale). A fit with
``max|grad| = 1e-3`` on a summed loss whose per-unit gradients are of order 0.1-1 fails the float64 rule.
Cost: ``min(8, n_units)`` masked gradients.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.func import grad

from .errors import InputError, NotAMinimiserError, UnconvergedWarning
from .params import Params, flatten
from .problem import Problem, resolve_task
from .removals import Removals
from .solvers import Solve, make_solver

__all__ = ["build_problem", "check_stationary", "check_chunk_size", "stationarity_ratio", "STATIONARITY_TOL",
           "ON_UNCONVERGED"]

STATIONARITY_TOL = {torch.float64: 1e-4, torch.float32: 1e-2}
ON_UNCONVERGED = ("raise", "warn")
N_PROBES = 8

_DTYPE_PATTERN = re.compile(r"dtype|scalar type|Double|Float|Half|BFloat16", re.IGNORECASE)
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
        if cause is not None and _DTYPE_PATTERN.search(str(cause)) and "must return" not in str(error):
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
                "operations and never modify mask (use mask * x or torch.where)."
            ) from error
        raise
    if not bool(problem.ones.eq(1).all()):
        raise InputError(
            "objective(params, mask) modified its mask argument in place; the estimates would use the altered "
            "mask. Never write into mask (compute a new tensor, e.g. torch.where(..., mask, 0))."
        )
    removals = Removals.select(problem.n_units, problem.theta, units, groups)
    solve = make_solver(problem.full_objective, problem.theta, hessian, damping=damping) if solver else None
    return problem, removals, solve


def stationarity_ratio(flat_objective: Callable, theta: torch.Tensor, full_gradient: torch.Tensor,
                       n_units: int, hook: Callable | None = None, unflatten: Callable | None = None
                       ) -> tuple[float, float, float]:
    """``(ratio, max|g(1)|, scale)`` of the module's rule; ``ratio = 0`` when the scale is 0."""
    k = min(N_PROBES, n_units)
    probes = torch.linspace(0, n_units - 1, k, device=theta.device).round().long().unique()
    masks = torch.ones(len(probes), n_units, dtype=theta.dtype, device=theta.device)
    masks[torch.arange(len(probes), device=theta.device), probes] = 0.0
    if hook is not None and unflatten is not None:
        differences = hook(unflatten(theta), masks)
    else:
        gradient_at = grad(flat_objective)
        differences = torch.stack([gradient_at(theta, mask) for mask in masks]) - full_gradient
    scale = float(differences.abs().amax(dim=1).median())
    norm = float(full_gradient.abs().max())
    return (norm / scale if scale > 0 else 0.0), norm, scale


def check_stationary(problem: Problem, on_unconverged: str, tol: float | None, where: str) -> None:
    """Raise or warn when ``params`` is not a minimiser by the module's rule."""
    if on_unconverged not in ON_UNCONVERGED:
        raise InputError(f"on_unconverged must be one of {ON_UNCONVERGED}, got {on_unconverged!r}.")
    dtype = problem.theta.dtype
    tol = STATIONARITY_TOL.get(dtype, 1e-2) if tol is None else tol
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
        raise InputError(f"stationarity_tol must be a positive number, got {tol!r}.")
    ratio, norm, scale = stationarity_ratio(problem.flat_objective, problem.theta, problem.full_gradient,
                                            problem.n_units, problem.hooks.dense, problem.unflatten)
    if ratio <= tol:
        return
    message = (
        f"{where}: params is not a minimiser of the objective: max|grad L(params, 1)| = {norm:.3e} is {ratio:.1e} "
        f"of the typical gradient change from removing one unit ({scale:.3e}), above stationarity_tol = {tol:.0e} "
        f"({dtype}). Every estimate would carry an error of about that fraction of an effect. Fit tighter (e.g. "
        "vif.fit.newton or a smaller gtol), or pass on_unconverged='warn' (or a larger stationarity_tol) to proceed."
    )
    if on_unconverged == "raise":
        raise NotAMinimiserError(message)
    warnings.warn(message, UnconvergedWarning, stacklevel=3)
