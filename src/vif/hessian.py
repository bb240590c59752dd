"""Second derivatives of a flat objective: the dense Hessian, Hessian-vector products, and Gauss-Newton products.

Everything here works on a scalar function of one flat parameter vector ``theta`` (shape ``(n_params,)``),
the mask already fixed. Products take ``V`` of shape ``(n_params,)`` or ``(n_params, k)`` and return
``H @ V`` of the same shape; :mod:`vif.solvers` turns them into inverse-Hessian-vector products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, jvp, vjp, vmap

from .errors import InputError
from .params import check_finite

MatVec = Callable[[torch.Tensor], torch.Tensor]
FlatFunction = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["MatVec", "hessian_matrix", "hvp", "gauss_newton_hvp", "dense_hessian", "dense_from_products"]


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


def dense_hessian(matrix: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Validate a user-supplied dense Hessian of shape ``(n_params, n_params)`` and return it symmetrised.

    Raises:
        InputError: wrong shape or not symmetric. NonFiniteError: NaN or infinite entries.
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
    return 0.5 * (matrix + matrix.T)
