"""Objectives of the form ``loss(f(theta), mask) + penalty(theta)``: masked gradient differences in output space.

When the mask enters only a loss on the model's ``n`` outputs ``eta = f(theta)`` (risk scores, logits) and
the penalty does not depend on the mask, the gradient difference that VIF needs is a Jacobian product of an
output-space difference:

``g(theta, m) - g(theta, 1) = J^T [grad_eta l(eta, m) - grad_eta l(eta, 1)]``,  ``J = d eta / d theta``

(the penalty cancels). :func:`mask_gradient_differences` evaluates this for a block of masks with one forward
pass of the model, ``k`` cheap gradients of the loss in output space (vmapped) and one batched vector-Jacobian
product; :func:`output_structure_hook` wraps it as the ``mask_gradient_differences`` hook of a task
(:class:`vif.task.Task`). Autodiff of the whole objective stays the reference (tests compare them).
Everything follows the device and dtype of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, vjp, vmap

from .errors import InputError
from .params import Params, check_finite, flatten

__all__ = ["mask_gradient_differences", "output_structure_hook"]

Outputs = Callable[[Params], torch.Tensor]
OutputLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mask_gradient_differences(outputs: Outputs, output_loss: OutputLoss, params: Params, masks: torch.Tensor,
                              *, chunk_size: int | None = None) -> torch.Tensor:
    """``grad L(params, masks[j]) - grad L(params, 1)`` for ``L = output_loss(outputs(params), mask) + penalty``.

    Args:
        outputs: ``params -> eta``, the model outputs, shape ``(n_outputs,)`` (any shape works).
        output_loss: ``(eta, mask) -> scalar``, the masked loss on the outputs; vmap-compatible over ``mask``.
        params: where to evaluate (tensor or dict of tensors).
        masks: ``(k, n_units)`` masks.
        chunk_size: masks per batched vector-Jacobian product (``None``: all ``k`` at once); bounds memory
            at ``chunk_size`` copies of the network's activations.

    Returns:
        ``(k, n_params)`` in the order of :func:`vif.params.flatten`, dtype and device of ``params``.

    Raises:
        InputError: ``masks`` not 2-D.
    """
    if not isinstance(masks, torch.Tensor) or masks.ndim != 2:
        raise InputError(f"masks must be a (k, n_units) tensor, got {getattr(masks, 'shape', type(masks).__name__)}.")
    theta, unflatten = flatten(params)
    eta, pullback = vjp(lambda vector: outputs(unflatten(vector)), theta)
    masks = masks.to(dtype=eta.dtype, device=eta.device)
    output_gradient = grad(output_loss)
    full = output_gradient(eta, torch.ones_like(masks[0]))
    differences = vmap(lambda mask: output_gradient(eta, mask))(masks) - full  # (k, *eta.shape)
    check_finite(differences, "the output-space gradient difference")
    blocks = torch.split(differences, chunk_size or max(1, masks.shape[0]))
    return torch.cat([vmap(lambda cotangent: pullback(cotangent)[0])(block) for block in blocks]) if len(masks) \
        else theta.new_zeros(0, theta.numel())


def output_structure_hook(outputs: Outputs, output_loss: OutputLoss, *, chunk_size: int | None = None
                          ) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """The task hook ``mask_gradient_differences(params, masks) -> (k, n_params)`` of :func:`mask_gradient_differences`."""

    def hook(params: Params, masks: torch.Tensor) -> torch.Tensor:
        return mask_gradient_differences(outputs, output_loss, params, masks, chunk_size=chunk_size)

    return hook
