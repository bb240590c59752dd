"""Iterative inverse-Hessian-vector products: batched conjugate gradient and LiSSA.

Both work on a matrix-vector product ``matvec(V) -> H @ V`` for ``V`` of shape ``(n_params, k)`` and solve
all columns at once (one product per iteration for the whole block), on the inputs' device and dtype.
Non-convergence raises :class:`~vif.errors.ConvergenceError` or warns (``on_nonconvergence="warn"``) with the
iterations and the worst relative residual; it is never silent. :mod:`vif.solvers` wraps them as backends.
"""

from __future__ import annotations

import math
import warnings

import torch

from .errors import ConvergenceError, ConvergenceWarning, InputError, NotPositiveDefiniteError
from .hessian import MatVec
from .params import check_finite

__all__ = ["cg_solve", "lissa_solve"]


def _report(message: str, on_nonconvergence: str) -> None:
    if on_nonconvergence == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=3)


def _check_on_nonconvergence(on_nonconvergence: str) -> None:
    if on_nonconvergence not in ("raise", "warn"):
        raise InputError(f"on_nonconvergence must be 'raise' or 'warn', got {on_nonconvergence!r}.")


def cg_solve(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-8,
    max_iter: int | None = None,
    preconditioner: MatVec | None = None,
    on_nonconvergence: str = "raise",
) -> torch.Tensor:
    """Solve ``(H + damping I) X = B`` for every column of ``B`` by (preconditioned) conjugate gradient.

    Args:
        matvec: ``V -> H @ V`` for ``V`` of shape ``(n_params, k)``; ``H`` symmetric positive definite.
        rhs: ``B``, shape ``(n_params,)`` or ``(n_params, k)``.
        damping: added to the diagonal.
        tol: stop when every column's residual norm is at most ``tol`` times its right-hand side's norm.
        max_iter: iteration cap, default ``10 * n_params``.
        preconditioner: ``R -> M^-1 R`` for an SPD approximation ``M`` of ``H + damping I``.
        on_nonconvergence: ``"raise"`` (default) a :class:`ConvergenceError`, or ``"warn"`` and return
            the last iterate.

    Returns:
        ``X`` with the shape of ``rhs``.

    Raises:
        ConvergenceError: some column did not reach ``tol``; the message gives iterations and residual.
        NotPositiveDefiniteError: a search direction with non-positive curvature was met.
    """
    _check_on_nonconvergence(on_nonconvergence)
    return _cg(matvec, rhs, damping=damping, tol=tol, max_iter=max_iter, preconditioner=preconditioner,
               on_nonconvergence=on_nonconvergence)[0]


def _cg(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-8,
    max_iter: int | None = None,
    preconditioner: MatVec | None = None,
    on_nonconvergence: str = "raise",
) -> torch.Tensor:
    """:func:`cg_solve`, returning ``(X, iterations, worst relative residual)``."""
    vector_input = rhs.ndim == 1
    b = rhs[:, None] if vector_input else rhs
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
                "minimises the objective."
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
            "hessian='exact' when the parameter count allows a dense Hessian.",
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
    tol: float = 1e-8,
    max_iter: int | None = None,
    on_nonconvergence: str = "raise",
) -> torch.Tensor:
    """Solve ``(H + damping I) X = B`` by the LiSSA recursion (a truncated Neumann series).

    ``h_0 = b``, ``h_j = b + (I - (H + damping I) / scale) h_{j-1}``, and ``X = h_J / scale``. The series
    converges when every eigenvalue of ``(H + damping I) / scale`` lies in ``(0, 2)``; by default ``scale``
    is 1.1 times the largest eigenvalue of ``H + damping I`` (power iteration). With full-batch HVPs the
    recursion is deterministic, so one repeat suffices. It stops when every column's relative residual
    ``||(H + damping I) X - B|| / ||B||`` is at most ``tol`` (checked every 10 steps) or after
    ``max_iter`` steps (default 10,000).

    Raises:
        ConvergenceError: the residual is above ``tol`` after ``max_iter`` steps (slow for ill-conditioned
            ``H``: convergence rate ``1 - lambda_min / scale``); add damping or use CG.
    """
    _check_on_nonconvergence(on_nonconvergence)
    return _lissa(matvec, rhs, damping=damping, scale=scale, tol=tol, max_iter=max_iter,
                  on_nonconvergence=on_nonconvergence)[0]


def _lissa(
    matvec: MatVec,
    rhs: torch.Tensor,
    *,
    damping: float = 0.0,
    scale: float | None = None,
    tol: float = 1e-8,
    max_iter: int | None = None,
    on_nonconvergence: str = "raise",
) -> tuple[torch.Tensor, int, float]:
    """:func:`lissa_solve`, returning ``(X, steps, worst relative residual)``."""
    vector_input = rhs.ndim == 1
    b = rhs[:, None] if vector_input else rhs
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
            f"tol={tol:g} (scale {scale:.3e}). Increase max_iter or damping (now {damping:g}), or use hessian='cg'.",
            on_nonconvergence,
        )
    return (solution[:, 0] if vector_input else solution), step, float(relative.max()) if relative.numel() else 0.0
