"""Inverse-Hessian-vector products (iHVP): dense Cholesky, pseudo-inverse, conjugate gradient, LiSSA.

Every solver works on a *matrix-vector product* callable ``matvec(V) -> H @ V`` for ``V`` of shape
``(n_params, k)``, so it can be tested on an explicit matrix without autograd. Damping enters as
``H + damping * I`` in every backend. A solver is a :class:`Solve`: call it on ``B`` (``(n_params,)`` or
``(n_params, k)``) for ``(H + damping I)^-1 B``; its ``report`` says what the last call took (iterations,
worst relative residual).

**One extension point.** ``hessian=`` of :func:`vif.influence` takes a backend *spec*: a name
(``"exact"``, ``"pinv"``, ``"cg"``, ``"lissa"``: the spec with default options), a spec object with options
(:class:`Exact`, :class:`PseudoInverse`, :class:`CG`, :class:`LiSSA`), a precomputed dense Hessian, or a
ready solver ``B -> H^-1 B``. A new backend is a class with ``build(source, damping) -> Solve`` where
``source`` is a :class:`HessianSource` (the dense Hessian on demand and the Hessian-vector product).

**Checks (all cheap, all raise a named error).** Every solve's output must be finite and of the right-hand
side's shape (:class:`~vif.errors.NonFiniteError` naming the backend; one pass over the output). A Cholesky
factor whose matrix is numerically singular is refused (:func:`vif.hessian.check_conditioning`, O(n^2) after
the O(n^3) factorisation). A precomputed dense ``hessian=`` is compared once with one Hessian-vector product of
the objective (:func:`vif.hessian.dense_hessian`). Spec options are validated when the spec is created.

Why our own CG: scipy's ``cg`` solves one right-hand side at a time on NumPy arrays; influence needs
one solve per target (hundreds), on the parameters' device and dtype. The batched CG below solves all
columns at once (one HVP per iteration for the whole block) and is checked against scipy in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .errors import InputError, NotPositiveDefiniteError
from .hessian import MatVec, check_conditioning, dense_from_products, dense_hessian, hessian_matrix, hvp
from .iterative import _cg, _lissa, _real, cg_solve, check_options, check_rcond, check_solution, lissa_solve

BACKENDS = ("exact", "pinv", "cg", "lissa")

__all__ = [
    "BACKENDS",
    "CG",
    "Exact",
    "HessianSource",
    "LiSSA",
    "PseudoInverse",
    "Solve",
    "SolveReport",
    "SolverSpec",
    "cg_solve",
    "cholesky_solver",
    "lissa_solve",
    "make_solver",
    "pinv_solver",
    "RelativeDamping",
    "relative",
]


@dataclass
class SolveReport:
    """What the last call of a :class:`Solve` took.

    ``iterations`` is 0 for direct solvers; ``residual`` is the worst relative residual
    ``||(H + damping I) x - b|| / ||b||`` over the columns (``None`` when not measured).
    """

    backend: str
    iterations: int = 0
    residual: float | None = None


class Solve:
    """A solver ``B -> (H + damping I)^-1 B`` with a :class:`SolveReport` of its last call."""

    def __init__(self, function: Callable[[torch.Tensor], tuple[torch.Tensor, int, float | None]], backend: str):
        self._function = function
        self.report = SolveReport(backend)
        self.damping: float | None = None  # the absolute damping used (set by make_solver)

    @property
    def backend(self) -> str:
        """The backend's name: ``"exact"``, ``"pinv"``, ``"cg"``, ``"lissa"``, or ``"callable"`` (the caller's)."""
        return self.report.backend

    @property
    def pseudo_inverse(self) -> bool:
        """Whether the solver applies a pseudo-inverse (no Schur complement, see :mod:`vif.heldout`)."""
        return self.backend == "pinv"

    def __call__(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve for ``rhs`` of shape ``(n_params,)`` or ``(n_params, k)``; same shape out.

        Raises:
            InputError: the backend returned another shape. NonFiniteError: it returned NaN or inf (one
                ``isfinite`` pass over the output, the cost of one vector operation).
        """
        solution, iterations, residual = self._function(rhs)
        self.report = SolveReport(self.report.backend, iterations, residual)
        return check_solution(solution, rhs, self.backend)


def _direct(function: Callable[[torch.Tensor], torch.Tensor], backend: str) -> Solve:
    return Solve(lambda rhs: (function(rhs), 0, None), backend)


def cholesky_solver(matrix: torch.Tensor, damping: float = 0.0, *, max_condition: float | None = None) -> Solve:
    """Solver ``B -> (H + damping I)^-1 B`` by a Cholesky factorisation of the dense, damped Hessian.

    A factorisation can succeed on a numerically singular matrix (a duplicated feature gives an eigenvalue of
    ``+-1e-16``) and the solve is then arbitrary along the flat direction, so the condition number is checked
    (:func:`vif.hessian.check_conditioning`: O(n^2) bounds, an exact ``eigh`` only when they come within 100x
    of the limit). ``max_condition`` defaults to :func:`vif.hessian.condition_limit` of the dtype
    (``eps ** -0.75``: about ``5.5e11`` in float64, ``1.6e5`` in float32); pass ``math.inf`` to skip the check,
    e.g. for a preconditioner.

    Raises:
        NotPositiveDefiniteError: the damped Hessian is not positive definite, or its condition number is above
            ``max_condition``; the message gives its smallest eigenvalue and the damping that would fix it.
    """
    damped = matrix + damping * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(damped)[0])
        suggestion = max(10.0 * abs(smallest), 1e-6)
        raise NotPositiveDefiniteError(
            f"The Hessian plus damping={damping:g} is not positive definite (smallest eigenvalue {smallest:.3e}). "
            f"Is params a minimiser of the objective? If it is, pass damping={suggestion:.1e}, or "
            "hessian='pinv' if the Hessian is singular only along symmetries of the model."
        )
    check_conditioning(damped, factor, damping, max_condition)

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        matrix_rhs = rhs if rhs.ndim == 2 else rhs[:, None]
        # two triangular solves: measured 2-4x faster than torch.cholesky_solve on CPU for few columns
        lower = torch.linalg.solve_triangular(factor, matrix_rhs, upper=False)
        solution = torch.linalg.solve_triangular(factor.mT, lower, upper=True)
        return solution if rhs.ndim == 2 else solution[:, 0]

    return _direct(solve, "exact")


def pinv_solver(matrix: torch.Tensor, damping: float = 0.0, rcond: float | None = None) -> Solve:
    """Solver ``B -> (H + damping I)^+ B`` by eigendecomposition, dropping near-zero eigenvalues.

    Use it when ``H`` is singular along directions that no target sees (e.g. rotations of an embedding):
    the pseudo-inverse solves within the range of ``H``. Eigenvalues below ``rcond * max|eigenvalue|``
    (default ``n_params * machine epsilon * 10``) are dropped; ``rcond`` must be in ``(0, 1)``.

    Raises:
        InputError: ``rcond`` is not a finite number in ``(0, 1)``.
        NotPositiveDefiniteError: a clearly negative eigenvalue (below ``-rcond * max|eigenvalue|``):
            ``params`` is a saddle point, not a minimiser.
    """
    check_rcond(rcond)
    damped = matrix + damping * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    eigenvalues, eigenvectors = torch.linalg.eigh(damped)
    scale = float(eigenvalues.abs().max())
    if rcond is None:
        rcond = 10.0 * matrix.shape[0] * torch.finfo(matrix.dtype).eps
    cutoff = rcond * scale
    if float(eigenvalues[0]) < -cutoff:
        raise NotPositiveDefiniteError(
            f"The Hessian plus damping={damping:g} has a negative eigenvalue {float(eigenvalues[0]):.3e} "
            f"(largest {scale:.3e}): params is not a minimiser. Refit to convergence, or pass "
            f"damping={10 * abs(float(eigenvalues[0])):.1e}."
        )
    keep = eigenvalues > cutoff
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, torch.ones_like(eigenvalues)), 0.0)

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        return eigenvectors @ (inverse[:, None] * (eigenvectors.T @ rhs)) if rhs.ndim == 2 else (
            eigenvectors @ (inverse * (eigenvectors.T @ rhs))
        )

    return _direct(solve, "pinv")


@dataclass
class HessianSource:
    """What a backend may ask of the Hessian: the dense matrix (built on first use) and its product.

    Attributes:
        flat_objective: ``theta -> scalar`` with the mask fixed at all ones.
        theta: the parameters, ``(n_params,)``.
        matrix: a dense Hessian given by the caller (validated), else built from Hessian-vector products.
    """

    flat_objective: Callable[[torch.Tensor], torch.Tensor]
    theta: torch.Tensor
    matrix: torch.Tensor | None = None
    _matvec: MatVec | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        """The dense Hessian ``(n_params, n_params)``."""
        if self.matrix is None:
            self.matrix = hessian_matrix(self.flat_objective, self.theta)
        return self.matrix

    def matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H @ V``: the dense matrix when there is one, else forward-over-reverse products."""
        if self.matrix is not None:
            return self.matrix @ vectors
        if self._matvec is None:
            self._matvec = hvp(self.flat_objective, self.theta)
        return self._matvec(vectors)


@runtime_checkable
class SolverSpec(Protocol):
    """A backend: ``build(source, damping) -> Solve`` (see the module notes)."""

    def build(self, source: HessianSource, damping: float) -> Solve:
        """Return a solver for ``(H + damping I)^-1``."""
        ...


@dataclass(frozen=True)
class Exact:
    """Dense Hessian and Cholesky factorisation (:func:`cholesky_solver`).

    ``operator``: optional product ``V -> M V`` whose dense matrix (built column block by column block) is
    factorised instead of the exact Hessian (e.g. a Gauss-Newton product).
    """

    operator: MatVec | None = None

    def build(self, source: HessianSource, damping: float) -> Solve:
        """Factorise once; every call is two triangular solves."""
        if self.operator is None:
            return cholesky_solver(source.dense(), damping)
        return cholesky_solver(dense_from_products(self.operator, source.theta), damping)


@dataclass(frozen=True)
class PseudoInverse:
    """Dense Hessian and eigendecomposition, near-zero eigenvalues dropped (:func:`pinv_solver`)."""

    rcond: float | None = None

    def __post_init__(self) -> None:
        check_rcond(self.rcond)

    def build(self, source: HessianSource, damping: float) -> Solve:
        """Decompose once; every call is two matrix products."""
        return pinv_solver(source.dense(), damping, self.rcond)


@dataclass(frozen=True)
class CG:
    """Batched (preconditioned) conjugate gradient on Hessian-vector products (:func:`cg_solve`).

    ``operator``: an optional product ``V -> M V`` to use instead of the exact Hessian's (for example a
    Gauss-Newton product, :func:`vif.hessian.gauss_newton_hvp`); it must be symmetric positive definite.
    """

    tol: float | None = None
    max_iter: int | None = None
    preconditioner: MatVec | None = None
    on_nonconvergence: str = "raise"
    operator: MatVec | None = None

    def __post_init__(self) -> None:
        check_options("CG", tol=self.tol, max_iter=self.max_iter, on_nonconvergence=self.on_nonconvergence)

    def build(self, source: HessianSource, damping: float) -> Solve:
        """No factorisation: each call iterates until every column reaches ``tol`` (default by dtype)."""
        matvec = source.matvec if self.operator is None else self.operator
        return Solve(lambda rhs: _cg(matvec, rhs, damping=damping, tol=self.tol, max_iter=self.max_iter,
                                     preconditioner=self.preconditioner, on_nonconvergence=self.on_nonconvergence),
                     "cg")


@dataclass(frozen=True)
class LiSSA:
    """The LiSSA recursion on Hessian-vector products (:func:`lissa_solve`); ``operator`` as in :class:`CG`."""

    scale: float | None = None
    tol: float | None = None
    max_iter: int | None = None
    on_nonconvergence: str = "raise"
    operator: MatVec | None = None

    def __post_init__(self) -> None:
        check_options("LiSSA", tol=self.tol, max_iter=self.max_iter, on_nonconvergence=self.on_nonconvergence,
                      scale=self.scale)

    def build(self, source: HessianSource, damping: float) -> Solve:
        """No factorisation: each call runs the recursion until every column reaches ``tol`` (default by dtype)."""
        matvec = source.matvec if self.operator is None else self.operator
        return Solve(lambda rhs: _lissa(matvec, rhs, damping=damping, scale=self.scale, tol=self.tol,
                                        max_iter=self.max_iter, on_nonconvergence=self.on_nonconvergence),
                     "lissa")


@dataclass(frozen=True)
class RelativeDamping:
    """Damping given relative to the Hessian's scale: ``lambda = fraction * trace(H) / n_params``.

    An absolute ``damping=1e-3`` means very different things for a summed objective (``H`` grows with the
    number of units) and for a mean; ``damping=vif.solvers.relative(1e-3)`` means the same for both (one
    thousandth of the Hessian's mean eigenvalue). The trace is exact when the backend builds the dense
    Hessian (``"exact"``, ``"pinv"``, a dense tensor); for ``"cg"``/``"lissa"`` it is a Hutchinson estimate
    from ``probes`` seeded Rademacher vectors on the backend's operator (one batched product). The absolute
    value used is on the solver: ``solve.damping``.
    """

    fraction: float
    probes: int = 64

    def __post_init__(self) -> None:
        if not (_real(self.fraction) and 0 <= self.fraction < math.inf):
            raise InputError(f"relative damping must be a finite fraction >= 0, got {self.fraction!r}.")

    def resolve(self, source: HessianSource, backend: object) -> float:
        """The absolute damping ``fraction * trace(H) / n_params`` for ``backend``'s operator."""
        n = source.theta.numel()
        operator = getattr(backend, "operator", None)
        if operator is None and (source.matrix is not None or isinstance(backend, Exact | PseudoInverse)):
            trace = float(source.dense().diagonal().sum())
        else:
            generator = torch.Generator(device="cpu").manual_seed(0)
            signs = torch.randint(0, 2, (n, self.probes), generator=generator, device="cpu")
            probes = (2.0 * signs - 1.0).to(dtype=source.theta.dtype, device=source.theta.device)
            products = (operator or source.matvec)(probes)
            trace = float((probes * products).sum() / self.probes)
        if not trace > 0:
            raise NotPositiveDefiniteError(
                f"relative damping needs trace(H) > 0, got {trace:.3e}: is params a minimiser? Pass an absolute damping."
            )
        return self.fraction * trace / n


def relative(fraction: float, probes: int = 64) -> RelativeDamping:
    """``damping=vif.solvers.relative(fraction)``: ``lambda = fraction * trace(H) / n_params`` (:class:`RelativeDamping`)."""
    return RelativeDamping(fraction, probes)


_NAMED = {"exact": Exact, "pinv": PseudoInverse, "cg": CG, "lissa": LiSSA}


def make_solver(
    flat_objective: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    backend: str | torch.Tensor | SolverSpec | Callable = "exact",
    *,
    damping: float | RelativeDamping = 0.0,
) -> Solve:
    """Build ``B -> (H + damping I)^-1 B`` for the Hessian ``H`` of ``flat_objective`` at ``theta``.

    The one place where ``hessian=`` is resolved: every route (the estimate, held-out steps, diagnostics) uses
    the built :class:`Solve`, which names its backend (a caller's ready solver is wrapped as ``"callable"``).

    Args:
        flat_objective: scalar function of a flat parameter vector (the mask already fixed).
        theta: the parameters, shape ``(n_params,)``.
        backend: a name in :data:`BACKENDS`, a spec (:class:`Exact`, :class:`PseudoInverse`, :class:`CG`,
            :class:`LiSSA` or your own ``build(source, damping)``), a precomputed dense Hessian
            ``(n_params, n_params)`` of the objective at ``theta`` (solved by Cholesky), or a ready solver
            ``B -> H^-1 B`` for ``(n_params,)`` and ``(n_params, k)`` inputs (factorise once, reuse).
        damping: ``lambda >= 0`` added to the diagonal of ``H``, or :func:`relative` ``(fraction)`` for
            ``lambda = fraction * trace(H) / n_params``.

    Raises:
        InputError: unknown backend, negative or non-finite damping, damping given with a ready solver, or a
            dense Hessian that one Hessian-vector product of the objective contradicts (:func:`dense_hessian`).
        NotPositiveDefiniteError: a dense backend's matrix is not positive definite or is numerically singular.
    """
    if not isinstance(damping, RelativeDamping) and not (_real(damping) and 0 <= damping < math.inf):
        raise InputError(f"damping must be a number >= 0 (finite) or vif.solvers.relative(fraction), got {damping!r}.")
    source = HessianSource(flat_objective, theta)
    if isinstance(backend, str):
        if backend not in _NAMED:
            raise InputError(f"Unknown hessian backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        backend = _NAMED[backend]()
    if isinstance(backend, torch.Tensor):
        source.matrix = dense_hessian(backend, theta, flat_objective)
        backend = Exact()
    if isinstance(backend, SolverSpec):
        absolute = damping.resolve(source, backend) if isinstance(damping, RelativeDamping) else float(damping)
        solve = backend.build(source, absolute)
        solve = solve if isinstance(solve, Solve) else _direct(solve, type(backend).__name__)
        solve.damping = absolute
        return solve
    if callable(backend):
        if isinstance(damping, RelativeDamping) or damping != 0:
            raise InputError("damping is applied by the solvers vif builds; include it in your own solver instead.")
        return backend if isinstance(backend, Solve) else _direct(backend, "callable")
    raise InputError(
        f"hessian must be one of {', '.join(BACKENDS)}, a solver spec such as vif.solvers.CG(tol=1e-6), a dense "
        f"Hessian tensor or a solver callable; got {type(backend).__name__}."
    )
