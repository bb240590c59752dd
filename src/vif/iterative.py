"""Iterative inverse-Hessian-vector products: batched conjugate gradient and LiSSA.

Both work on a matrix-vector product ``matvec(V) -> H @ V`` for ``V`` of shape ``(n_params, k)`` and solve
all columns at once (one product per iteration for the whole block), on the inputs' device and dtype.
Non-convergence raises :class:`~vif.errors.ConvergenceError` or warns (``on_nonconvergence="warn"``) with the
iterations and the worst relative residual; it is never silent. :mod:`vif.solvers` wraps them as backends.

Options are validated before any product is taken (:func:`check_options`): ``tol`` a finite number in
``(0, 1)``, ``max_iter`` a positive integer, ``scale`` a finite number ``> 0``, ``damping`` finite ``>= 0``
(and the pseudo-inverse's ``rcond`` in ``(0, 1)``, :func:`check_rcond`). Every backend's output passes
:func:`check_solution` (shape and finiteness).
The default ``tol`` follows the right-hand side's dtype (:func:`default_tol`): ``1e-8`` in float64, ``1e-4`` in
float32, whose rounding keeps a measured residual from getting much below ``1e-5``.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

from .errors import ConvergenceError, ConvergenceWarning, InputError, NonFiniteError, NotPositiveDefiniteError
from .hessian import MatVec
from .params import check_finite

__all__ = ["DEFAULT_TOL", "cg_solve", "check_options", "check_rcond", "check_solution", "default_tol", "lissa_solve"]

#: Default relative-residual tolerance of CG and LiSSA by dtype (other dtypes: ``1e-2``).
DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}


def default_tol(dtype: torch.dtype) -> float:
    """The default ``tol`` of :func:`cg_solve` and :func:`lissa_solve` for ``dtype`` (see :data:`DEFAULT_TOL`)."""
    return DEFAULT_TOL.get(dtype, 1e-2)


def _precision_hint(dtype: torch.dtype, tol: float) -> str:
    """The part of a solver's failure message that names a low-precision dtype ("" in float64)."""
    if dtype == torch.float64:
        return ""
    return (f" The right-hand side is {dtype} (eps {torch.finfo(dtype).eps:.1e}): rounding keeps the residual from "
            f"getting much below ~1e3 eps, so tol={tol:g} may be out of reach. Pass tol >= {default_tol(dtype):g} "
            "(the default for this dtype) or solve in float64 (params and data as .double()).")


def _report(message: str, on_nonconvergence: str) -> None:
    if on_nonconvergence == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=3)


def _check_on_nonconvergence(on_nonconvergence: str) -> None:
    if on_nonconvergence not in ("raise", "warn"):
        raise InputError(f"on_nonconvergence must be 'raise' or 'warn', got {on_nonconvergence!r}.")


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_options(solver: str, *, tol: float | None = None, max_iter: int | None = None,
                  on_nonconvergence: str = "raise", scale: float | None = None, damping: float = 0.0) -> None:
    """Refuse an option that would make ``solver`` ("CG" or "LiSSA") return a silent or misleading answer.

    ``tol`` must be a finite number in ``(0, 1)`` (NaN never stops, ``<= 0`` can never be met, ``>= 1`` accepts
    the zero start), ``max_iter`` a positive integer, ``scale`` a finite number ``> 0``, ``damping`` a finite
    number ``>= 0``, ``on_nonconvergence`` ``"raise"`` or ``"warn"``; ``None`` means the default. Costs nothing.

    Raises:
        InputError: naming the option, the value seen and what is accepted.
    """
    if tol is not None and not (_real(tol) and 0 < tol < 1):
        raise InputError(f"{solver} tol must be a finite number in (0, 1), the relative residual to reach (e.g. 1e-6), "
                         f"got {tol!r}; leave it out for the dtype's default (1e-8 in float64, 1e-4 in float32).")
    if max_iter is not None and not (isinstance(max_iter, numbers.Integral) and not isinstance(max_iter, bool)
                                     and max_iter >= 1):
        raise InputError(f"{solver} max_iter must be a positive integer (or None for the default), got {max_iter!r}.")
    if scale is not None and not (_real(scale) and 0 < scale < math.inf):
        raise InputError(f"{solver} scale must be a finite number > 0 (above the largest eigenvalue of H + damping I), "
                         f"got {scale!r}; leave it out to estimate it by power iteration.")
    if not (_real(damping) and 0 <= damping < math.inf):
        raise InputError(f"{solver} damping must be a finite number >= 0, got {damping!r}.")
    _check_on_nonconvergence(on_nonconvergence)


def check_rcond(rcond: float | None) -> None:
    """Refuse a pseudo-inverse cutoff outside ``(0, 1)`` (``<= 0`` keeps rounding noise, ``>= 1`` drops everything)."""
    if rcond is not None and not (_real(rcond) and 0 < rcond < 1):
        raise InputError(f"pinv rcond must be a finite number in (0, 1), the eigenvalue cutoff relative to the largest "
                         f"(e.g. 1e-8), got {rcond!r}; leave it out for 10 * n_params * eps.")


def check_solution(solution: object, rhs: torch.Tensor, backend: str) -> torch.Tensor:
    """Return ``solution`` if it is a finite tensor of ``rhs``'s shape (one ``isfinite`` pass over it).

    Raises:
        InputError: another shape or type. NonFiniteError: NaN or inf, naming ``backend`` and whether the
            right-hand side was already non-finite.
    """
    if not isinstance(solution, torch.Tensor) or solution.shape != rhs.shape:
        got = tuple(solution.shape) if isinstance(solution, torch.Tensor) else type(solution).__name__
        raise InputError(f"The {backend!r} solver returned {got} for a right-hand side of shape {tuple(rhs.shape)}; "
                         "a solver must return H^-1 B with the shape of B.")
    if not bool(torch.isfinite(solution).all()):
        if not bool(torch.isfinite(rhs).all()):
            cause = ("because the right-hand side is itself not finite (the target's gradient in an estimate, the "
                     "objective's gradient in a preconditioned fit): check the target, or the iterate, at params")
        else:
            cause = ("from a finite right-hand side: check the solver (a NaN or a zero pivot in its factorisation, a "
                     "singular matrix) or add damping")
        raise NonFiniteError(f"The {backend!r} solver returned {int((~torch.isfinite(solution)).sum())} non-finite "
                             f"value(s) (NaN or inf) {cause}.")
    return solution


def cg_solve(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner: MatVec | None = None,
    on_nonconvergence: str = "raise",
) -> torch.Tensor:
    """Solve ``(H + damping I) X = B`` for every column of ``B`` by (preconditioned) conjugate gradient.

    Args:
        matvec: ``V -> H @ V`` for ``V`` of shape ``(n_params, k)``; ``H`` symmetric positive definite.
        rhs: ``B``, shape ``(n_params,)`` or ``(n_params, k)``.
        damping: added to the diagonal.
        tol: stop when every column's residual norm is at most ``tol`` times its right-hand side's norm;
            default :func:`default_tol` of ``rhs``'s dtype (``1e-8`` in float64, ``1e-4`` in float32).
        max_iter: iteration cap, default ``10 * n_params``.
        preconditioner: ``R -> M^-1 R`` for an SPD approximation ``M`` of ``H + damping I``.
        on_nonconvergence: ``"raise"`` (default) a :class:`ConvergenceError`, or ``"warn"`` and return
            the last iterate.

    Returns:
        ``X`` with the shape of ``rhs``.

    Raises:
        InputError: an invalid option (:func:`check_options`).
        ConvergenceError: some column did not reach ``tol``; the message gives iterations and residual.
        NotPositiveDefiniteError: a search direction with non-positive curvature was met.
    """
    check_options("CG", tol=tol, max_iter=max_iter, on_nonconvergence=on_nonconvergence, damping=damping)
    return _cg(matvec, rhs, damping=damping, tol=tol, max_iter=max_iter, preconditioner=preconditioner,
               on_nonconvergence=on_nonconvergence)[0]


def _cg(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner: MatVec | None = None,
    on_nonconvergence: str = "raise",
) -> tuple[torch.Tensor, int, float]:
    """:func:`cg_solve`, returning ``(X, iterations, worst relative residual)``."""
    vector_input = rhs.ndim == 1
    b = rhs[:, None] if vector_input else rhs
    tol = default_tol(b.dtype) if tol is None else tol
    n_params = b.shape[0]
    max_iter = 10 * n_params if max_iter is None else max_iter

    def operator(v: torch.Tensor) -> torch.Tensor:
        return matvec(v) + damping * v

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return r if preconditioner is None else preconditioner(r)

    b_norm = torch.linalg.vector_norm(b, dim=0)
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    threshold = tol * torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    residual = torch.linalg.vector_norm(r, dim=0)
    iteration = 0
    while bool((residual > threshold).any()) and iteration < max_iter:
        active = residual > threshold
        hp = operator(p)
        curvature = (p * hp).sum(0)
        if bool((curvature[active] <= 0).any()):
            raise NotPositiveDefiniteError(
                f"CG met non-positive curvature {float(curvature[active].min()):.3e} at iteration {iteration}: "
                f"H + damping={damping:g} is not positive definite. Pass a larger damping or check that params "
                "minimises the objective." + _precision_hint(b.dtype, tol)
            )
        alpha = torch.where(active, rz / torch.where(active, curvature, torch.ones_like(curvature)), 0.0)
        x = x + alpha * p
        r = r - alpha * hp
        z = precondition(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), 0.0)
        p = z + beta * p
        rz = rz_new
        residual = torch.linalg.vector_norm(r, dim=0)
        iteration += 1
    check_finite(x, "the CG solution", "The Hessian-vector product produced NaN; check the objective.")
    relative = residual / torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    if bool((residual > threshold).any()):
        _report(
            f"CG did not converge in {iteration} iterations: worst relative residual {float(relative.max()):.2e} "
            f"> tol={tol:g}. Increase max_iter, add damping (now {damping:g}) or a preconditioner, or use "
            "hessian='exact' when the parameter count allows a dense Hessian." + _precision_hint(b.dtype, tol),
            on_nonconvergence,
        )
    return (x[:, 0] if vector_input else x), iteration, float(relative.max()) if relative.numel() else 0.0


def _largest_eigenvalue(matvec: MatVec, n_params: int, like: torch.Tensor, iterations: int = 50) -> float:
    generator = torch.Generator(device="cpu").manual_seed(0)
    vector = torch.randn(n_params, generator=generator, dtype=like.dtype, device="cpu").to(like.device)
    vector = vector / torch.linalg.vector_norm(vector)
    value = 0.0
    for _ in range(iterations):
        product = matvec(vector)
        value = float(torch.linalg.vector_norm(product))
        if value == 0.0:
            return 0.0
        vector = product / value
    return value


def lissa_solve(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    scale: float | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    on_nonconvergence: str = "raise",
) -> torch.Tensor:
    """Solve ``(H + damping I) X = B`` by the LiSSA recursion (a truncated Neumann series).

    ``h_0 = b``, ``h_j = b + (I - (H + damping I) / scale) h_{j-1}``, and ``X = h_J / scale``. The series
    converges when every eigenvalue of ``(H + damping I) / scale`` lies in ``(0, 2)``; by default ``scale``
    is 1.1 times the largest eigenvalue of ``H + damping I`` (power iteration). With full-batch HVPs the
    recursion is deterministic, so one repeat suffices. It stops when every column's relative residual
    ``||(H + damping I) X - B|| / ||B||`` is at most ``tol`` (checked every 10 steps; default
    :func:`default_tol` of the dtype: ``1e-8`` in float64, ``1e-4`` in float32) or after ``max_iter`` steps
    (default 10,000).

    Raises:
        InputError: an invalid option (:func:`check_options`).
        ConvergenceError: the residual is above ``tol`` after ``max_iter`` steps (slow for ill-conditioned
            ``H``: convergence rate ``1 - lambda_min / scale``); add damping or use CG.
    """
    check_options("LiSSA", tol=tol, max_iter=max_iter, on_nonconvergence=on_nonconvergence, scale=scale,
                  damping=damping)
    return _lissa(matvec, rhs, damping=damping, scale=scale, tol=tol, max_iter=max_iter,
                  on_nonconvergence=on_nonconvergence)[0]


def _lissa(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    scale: float | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    on_nonconvergence: str = "raise",
) -> tuple[torch.Tensor, int, float]:
    """:func:`lissa_solve`, returning ``(X, steps, worst relative residual)``."""
    vector_input = rhs.ndim == 1
    b = rhs[:, None] if vector_input else rhs
    tol = default_tol(b.dtype) if tol is None else tol
    max_iter = 10_000 if max_iter is None else max_iter

    def operator(v: torch.Tensor) -> torch.Tensor:
        return matvec(v) + damping * v

    if scale is None:
        scale = 1.1 * _largest_eigenvalue(operator, b.shape[0], b)
    if not scale > 0 or not math.isfinite(scale):
        raise InputError(f"LiSSA needs a positive finite scale, got {scale}; the Hessian may be zero or NaN.")
    b_norm = torch.linalg.vector_norm(b, dim=0)
    b_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    estimate = b.clone()
    relative = torch.full_like(b_norm, float("inf"))
    step = 0
    while step < max_iter:
        product = operator(estimate)
        step += 1
        if step % 10 == 0 or step == max_iter:
            relative = torch.linalg.vector_norm(product / scale - b, dim=0) / b_norm
            if bool((relative <= tol).all()):
                break
        estimate = b + estimate - product / scale
    solution = estimate / scale
    check_finite(solution, "the LiSSA solution", f"The recursion diverged: scale={scale:.3e} is too small.")
    if bool((relative > tol).any()):
        _report(
            f"LiSSA did not converge in {step} steps: worst relative residual {float(relative.max()):.2e} > "
            f"tol={tol:g} (scale {scale:.3e}). Increase max_iter or damping (now {damping:g}), or use hessian='cg'."
            + _precision_hint(b.dtype, tol),
            on_nonconvergence,
        )
    return (solution[:, 0] if vector_input else solution), step, float(relative.max()) if relative.numel() else 0.0
