"""The proximal Bregman response function (PBRF, Bae et al. 2022): the one implementation.

For a model with outputs ``S(theta)`` (logits, risk scores) and a loss written on the outputs,
``L(theta, m) = Lambda(S(theta), m) + (w / 2) ||theta||^2``, the PBRF of a removal ``r`` minimises::

    Lambda(S(theta), 1 - r) - <grad_S Lambda(S_s, 1), S(theta)> + ((w + lambda) / 2) ||theta - theta_s||^2

which is, up to a constant, the Bregman divergence of the full-data loss in output space around
``S_s = S(theta_s)``, minus the removed units' share of the loss, plus a proximity term of strength
``w + lambda`` (a quadratic weight decay is its own Bregman divergence). At the full mask its minimiser is
``theta_s``, and its Hessian there is the Gauss-Newton Hessian plus ``(w + lambda) I``: damped VIF with the
Gauss-Newton Hessian is its first-order estimate. Chapters 3, 5 and 6 use it as the ground truth of damped
estimates on non-convex models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .params import Params, flatten

__all__ = ["proximal_objective"]


def proximal_objective(outputs: Callable[[Params], torch.Tensor], output_loss: Callable[..., torch.Tensor],
                       params_s: Params, weight: float, full_masks: tuple[torch.Tensor, ...]
                       ) -> Callable[..., torch.Tensor]:
    """The PBRF objective ``objective(params, *masks) -> scalar`` of the module docstring.

    Args:
        outputs: ``params -> S``, the model's outputs (any shape).
        output_loss: ``Lambda(S, *masks) -> scalar``, the data term of the objective on the outputs; its
            extra arguments (one mask, several role masks, cached counts) are passed through unchanged.
        params_s: ``theta_s``, the fitted parameters the response is taken around.
        weight: ``w + lambda``, the proximity strength (weight decay of the objective plus damping).
        full_masks: the extra arguments of ``output_loss`` at the full data, for the slope
            ``grad_S Lambda(S_s, 1)``.

    Returns:
        ``objective(params, *masks)``; its minimiser at the full masks is ``params_s``.
    """
    theta_s, _ = flatten(params_s)
    scores_s = outputs(params_s).detach()
    slope = torch.func.grad(output_loss)(scores_s, *full_masks).detach()

    def objective(params: Params, *masks: torch.Tensor) -> torch.Tensor:
        scores = outputs(params)
        theta = params.reshape(-1) if isinstance(params, torch.Tensor) else torch.cat(
            [value.reshape(-1) for value in params.values()])  # differentiable (flatten detaches)
        return (output_loss(scores, *masks) - (slope * scores).sum()
                + 0.5 * weight * ((theta - theta_s) ** 2).sum())

    return objective
