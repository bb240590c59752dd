"""Second derivatives of a flat objective: the dense Hessian, Hessian-vector products, and Gauss-Newton products.

Everything here works on a scalar function of one flat parameter vector ``theta`` (shape ``(n_params,)``),
the mask already fixed. Products take ``V`` of shape ``(n_params,)`` or ``(n_params, k)`` and return
``H @ V`` of the same shape; :mod:`vif.solvers` turns them into inverse-Hessian-vector products.

Two cheap checks of a dense matrix live here too: :func:`dense_hessian` compares a caller's matrix with one
Hessian-vector product of the objective, and :func:`check_conditioning` refuses a factorised Hessian that is
numerically singular (condition number above :func:`condition_limit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import grad, jvp, vjp, vmap

from .errors import InputError, NotPositiveDefiniteError
from .params import check_finite

MatVec = Callable[[torch.Tensor], torch.Tensor]
FlatFunction = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["MatVec", "hessian_matrix", "hvp", "gauss_newton_hvp", "dense_hessian", "dense_from_products",
           "check_conditioning", "condition_limit"]


def _columns(single: Callable[[torch.Tensor], torch.Tensor]) -> MatVec:
    """Lift a product of one vector to ``(n_params,)`` or ``(n_params, k)`` inputs (columns batched by vmap)."""

    def matvec(vectors: torch.Tensor) -> torch.Tensor:
        if vectors.ndim == 1:
            return single(vectors)
        return vmap(single, in_dims=1, out_dims=1)(vectors)

    return matvec


def hvp(flat_objective: FlatFunction, theta: torch.Tensor) -> MatVec:
    """Hessian-vector product ``V -> H @ V`` of ``flat_objective`` at ``theta``.

    Forward-over-reverse (Pearlmutter): one gradient evaluation per column, columns batched by vmap.
    """
    gradient = grad(flat_objective)
    return _columns(lambda vector: jvp(gradient, (theta,), (vector,))[1])


def gauss_newton_hvp(
    outputs: FlatFunction,
    output_loss: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    penalty: FlatFunction | None = None,
) -> MatVec:
    """Gauss-Newton product ``V -> [J^T (d^2 l / d eta^2) J + d^2 r / d theta^2] V`` at ``theta``.

    For an objective ``l(eta(theta)) + r(theta)`` with model outputs ``eta = outputs(theta)`` (any shape)
    and a loss ``l`` that is convex in them, the Gauss-Newton matrix drops the term ``sum_k dl/deta_k
    d^2 eta_k / d theta^2`` of the Hessian; it is positive semi-definite whatever ``theta`` is. ``J`` is the
    Jacobian of ``outputs``; the output-space Hessian is applied by a Hessian-vector product of ``l``, so
    neither ``J`` nor the output Hessian is ever formed. ``penalty`` (``r``, e.g. weight decay) enters
    with its exact Hessian.

    Args:
        outputs: ``theta -> eta``.
        output_loss: ``eta -> scalar`` (the mask already fixed).
        theta: the parameters, ``(n_params,)``.
        penalty: optional ``theta -> scalar``.
    """
    eta, pullback = vjp(outputs, theta)
    loss_gradient = grad(output_loss)
    penalty_product = None if penalty is None else hvp(penalty, theta)

    def single(vector: torch.Tensor) -> torch.Tensor:
        _, forward = jvp(outputs, (theta,), (vector,))  # J v
        _, curvature = jvp(loss_gradient, (eta,), (forward,))  # (d^2 l / d eta^2) J v
        product = pullback(curvature)[0]  # J^T ...
        return product if penalty_product is None else product + penalty_product(vector)

    return _columns(single)


def hessian_matrix(flat_objective: FlatFunction, theta: torch.Tensor, *, chunk_size: int = 128) -> torch.Tensor:
    """Dense Hessian ``(n_params, n_params)`` of a scalar function of a flat parameter vector, symmetrised.

    Built from Hessian-vector products with ``chunk_size`` columns at a time, so that memory stays at
    ``chunk_size`` gradient evaluations whatever the parameter count.
    """
    return dense_from_products(hvp(flat_objective, theta), theta, chunk_size=chunk_size)


def dense_from_products(product: MatVec, theta: torch.Tensor, *, chunk_size: int = 128) -> torch.Tensor:
    """The symmetrised dense matrix ``(n_params, n_params)`` of a product ``V -> M V``, ``chunk_size`` columns at a time."""
    identity = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    matrix = torch.cat([product(columns) for columns in torch.split(identity, chunk_size, dim=1)], dim=1)
    matrix = 0.5 * (matrix + matrix.T)
    return check_finite(matrix, "the Hessian of the objective at params", "Check the objective for log(0) or overflow.")


def _probe(n_params: int, like: torch.Tensor, columns: int = 1) -> torch.Tensor:
    """A seeded standard-normal ``(n_params, columns)`` matrix, ``like``'s dtype and device (same on every device)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(n_params, columns, generator=generator, dtype=like.dtype, device="cpu").to(device=like.device)


def _spot_check(matrix: torch.Tensor, flat_objective: FlatFunction, theta: torch.Tensor) -> None:
    """Compare ``matrix @ v`` with the objective's Hessian-vector product on one seeded random ``v``."""
    probe = _probe(theta.numel(), theta)[:, 0]
    given = matrix @ probe
    truth = hvp(flat_objective, theta)(probe).detach()
    norm = float(torch.linalg.vector_norm(truth))
    mismatch = float(torch.linalg.vector_norm(given - truth)) / norm if norm > 0 else float(given.abs().max() > 0)
    tolerance = max(1e-3, 1e5 * torch.finfo(theta.dtype).eps)
    if not mismatch > tolerance:  # NaN in the product is caught by the caller's finiteness checks
        return
    power = float(given @ given)
    factor = float(given @ truth) / power if power > 0 else 0.0  # the best c in truth ~ c * given
    scaled = float(torch.linalg.vector_norm(factor * given - truth)) / norm if norm > 0 else math.inf
    if scaled <= tolerance and factor > 0:
        cause = (f"it is {1 / factor:.4g} times the objective's Hessian: built for the mean of the objective when "
                 "the objective is a sum (or the reverse), or with another l2 or number of units?")
    elif scaled <= tolerance and factor < 0:
        cause = (f"it is the negated Hessian (times {-1 / factor:.4g}): built for a log-likelihood or score that the "
                 "objective minimises with the opposite sign?")
    else:
        cause = "it is not the Hessian of this objective at params: computed at other params or for another objective?"
    raise InputError(
        f"The precomputed Hessian does not match the objective: on a random vector v, ||H_given v - H v|| / ||H v|| = "
        f"{mismatch:.3g} (tolerance {tolerance:.0e}, H v by autodiff); {cause} Rebuild it from the objective that is "
        "passed, at params (vif.hessian.hessian_matrix), or pass hessian='exact'. To use another matrix M on purpose "
        "(the identity, a Gauss-Newton matrix), pass hessian=vif.solvers.Exact(operator=lambda V: M @ V)."
    )


def dense_hessian(matrix: torch.Tensor, theta: torch.Tensor,
                  flat_objective: FlatFunction | None = None) -> torch.Tensor:
    """Validate a user-supplied dense Hessian of shape ``(n_params, n_params)`` and return it symmetrised.

    With ``flat_objective`` (the objective of ``theta``, mask fixed), the matrix is spot-checked once against one
    Hessian-vector product of it on a seeded random vector (cost: one HVP, about two gradient evaluations, and
    one matrix-vector product); a relative mismatch above ``max(1e-3, 1e5 eps)`` is refused.

    Raises:
        InputError: wrong shape, not symmetric, or not the objective's Hessian at ``theta`` (the message says
            whether it is a multiple of it, e.g. the mean's Hessian for a summed objective, or its negative).
        NonFiniteError: NaN or infinite entries.
    """
    n_params = theta.numel()
    if matrix.shape != (n_params, n_params):
        raise InputError(
            f"A precomputed Hessian must have shape ({n_params}, {n_params}) (parameters flattened as in "
            f"vif.params.flatten), got {tuple(matrix.shape)}."
        )
    matrix = matrix.to(dtype=theta.dtype, device=theta.device)
    check_finite(matrix, "the precomputed Hessian")
    asymmetry = float((matrix - matrix.T).abs().max())
    if asymmetry > 1e-6 * max(float(matrix.abs().max()), 1e-300):
        raise InputError(f"The precomputed Hessian is not symmetric (max |H - H^T| = {asymmetry:.2e}).")
    matrix = 0.5 * (matrix + matrix.T)
    if flat_objective is not None:
        _spot_check(matrix, flat_objective, theta)
    return matrix


def condition_limit(dtype: torch.dtype) -> float:
    """The largest condition number a Cholesky solve accepts in ``dtype``: ``eps ** -0.75``.

    About ``5.5e11`` in float64 and ``1.6e5`` in float32. A solve loses about ``log10(kappa)`` digits, so at the
    limit an iHVP keeps only ``eps ** 0.25`` relative accuracy (``1e-4`` in float64, ``2e-2`` in float32) along
    the flattest direction; an exactly singular Hessian shows a condition number near ``1 / (n eps)`` or more
    (``1e13``-``1e16`` in float64), and the package's well-posed models stay below ``1e9``.
    """
    return torch.finfo(dtype).eps ** -0.75


def check_conditioning(damped: torch.Tensor, factor: torch.Tensor, damping: float, limit: float | None = None) -> None:
    """Refuse a factorised ``H + damping I = L L^T`` whose condition number exceeds ``limit``.

    Cheap bounds first (three triangular solves with ``L``, O(n^2) against the factorisation's n^3 / 3; measured
    at 0.1 ms for n = 300 and 2-3% of the factorisation for n = 1000-3000): the largest eigenvalue is at least
    the largest diagonal entry, the smallest at most the smallest squared pivot of ``L`` and ``1 / v^T H^-1 v``
    for the unit vector ``v`` after one inverse-iteration step from a seeded random vector. Only when these
    bound the condition number above ``limit / 100`` is it computed exactly (``eigh``, O(n^3)); above ``limit``
    (default :func:`condition_limit` of the dtype; ``math.inf`` skips the check) it raises.

    Raises:
        NotPositiveDefiniteError: the condition number, the smallest and largest eigenvalues, the parameters
            the flattest direction loads on, and the remedies (relative damping, ``hessian='pinv'``).
    """
    limit = condition_limit(damped.dtype) if limit is None else limit
    if math.isinf(limit) or damped.shape[0] < 2:
        return
    largest = float(damped.diagonal().max())
    step = torch.linalg.solve_triangular(factor, _probe(damped.shape[0], damped), upper=False)
    step = torch.linalg.solve_triangular(factor.mT, step, upper=True)  # H^-1 p
    half = torch.linalg.solve_triangular(factor, step / torch.linalg.vector_norm(step), upper=False)
    curvature = float(half.square().sum())  # v^T H^-1 v = ||L^-1 v||^2 <= 1 / lambda_min
    smallest = min(float(factor.diagonal().min()) ** 2, 1.0 / curvature if 0 < curvature < math.inf else 0.0)
    if smallest > 0 and largest / smallest * 100 < limit:
        return
    eigenvalues, eigenvectors = torch.linalg.eigh(damped)
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    condition = high / low if low > 0 else math.inf
    if condition <= limit:
        return
    n = damped.shape[0]
    flat = eigenvectors[:, 0].abs()
    loads = [index for index in flat.topk(min(5, n)).indices.tolist() if flat[index] > 0.1 * flat.max()]
    fraction = max(1e-6, 10.0 ** math.ceil(math.log10(100 * high * n / (limit * float(damped.diagonal().sum())))))
    precision = "" if damped.dtype == torch.float64 else " or compute in float64,"
    raise NotPositiveDefiniteError(
        f"The Hessian plus damping={damping:g} is numerically singular: condition number {condition:.1e} (smallest "
        f"eigenvalue {low:.3e}, largest {high:.3e}) is above {limit:.1e}, the most a {damped.dtype} Cholesky solve "
        f"resolves. Its flattest direction loads most on flat parameters {loads} (a duplicated or constant feature, "
        "an unpenalised symmetry?), and the inverse along it is arbitrary. Pass "
        f"damping=vif.solvers.relative({fraction:.0e}) (here an absolute damping={100 * high / limit:.1e}),"
        f"{precision} or hessian='pinv', which drops that direction and is exact when the target does not see it."
    )
