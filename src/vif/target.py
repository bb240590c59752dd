"""The target: what an influence estimate (or a refit) measures, checked once for every route.

A target is ``target(params) -> scalar or (n_targets,)``, or mask-aware ``target(params, mask)`` (detected
from its signature, or declared with ``target_takes_mask``): a mask-aware target is evaluated at the mask
of the removal, ``m = 1 - r``, so it can drop the removed units from what it measures. :class:`Target` holds
every rule about it in one place: mask-aware detection, the probe at ``theta_hat`` (a tensor, scalar or
1-D, finite), its dtype (computed with the parameters' dtype: data of another dtype raise :class:`InputError`
naming both; a floating value of another dtype is cast to the parameters'), the flat form ``f(theta, m) ->
(n_targets,)`` every route differentiates, its Jacobian, and the shape of the result (``(n_removals,)`` for
a scalar target, else ``(n_removals, n_targets)``). :func:`vif.influence`, :func:`vif.trust.trust`,
:func:`vif.forward.forward_influence`, :func:`vif.datamodels.second_order_influence` and
:func:`vif.leave_one_out` all build one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch.func import jacrev, vjp

from .errors import InputError, VIFError
from .params import DTYPE_PATTERN, check_finite

__all__ = ["Target", "takes_mask"]


def takes_mask(target: Callable, override: bool | None) -> bool:
    """Whether ``target`` is mask-aware: ``override``, else two required positional parameters."""
    if override is not None:
        return override
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2


class Target:
    """A target on the flat parameters, probed and checked at ``theta_hat``.

    Args:
        target: ``target(params)`` or ``target(params, mask)``.
        theta: ``theta_hat`` flat, ``(n_params,)``; ``unflatten`` rebuilds the caller's parameter structure.
        n_units: the length of the mask.
        declared: ``target_takes_mask`` (``None``: detect from the signature).

    Attributes:
        mask_aware: whether the target takes the mask. scalar: whether it returns a scalar.
        n_targets: the number of targets (1 for a scalar). ones: the full mask ``(n_units,)``.

    Raises:
        InputError: not callable; a detected mask-aware target that fails with the mask (the message says how
            to declare it); a value that is not a scalar or 1-D floating tensor; a target that fails on a dtype
            mismatch (data of another dtype than params).
        NonFiniteError: the target is not finite at ``theta_hat``.
    """

    def __init__(self, target: Callable, theta: torch.Tensor, unflatten: Callable, n_units: int,
                 declared: bool | None = None) -> None:
        if not callable(target):
            raise InputError(
                f"target must be callable as target(params) or target(params, mask), got {type(target).__name__}.")
        self.function, self.theta, self.unflatten = target, theta, unflatten
        self.ones = torch.ones(n_units, dtype=theta.dtype, device=theta.device)
        self.mask_aware = takes_mask(target, declared)
        try:
            probe = self._probe(declared)
        except VIFError:
            raise
        except RuntimeError as error:
            if not DTYPE_PATTERN.search(str(error)):
                raise
            raise InputError(
                f"target failed on a dtype mismatch: params are {theta.dtype} but the target computes with tensors of "
                f"another dtype ({error}). Build the target's data with the parameters' dtype (e.g. "
                f"X.to({theta.dtype})), or convert params and data together."
            ) from error
        if not isinstance(probe, torch.Tensor) or probe.ndim > 1:
            shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
            raise InputError(f"target must return a scalar or a 1-D tensor of targets, got {shape}; flatten it.")
        if not probe.is_floating_point():
            raise InputError(f"target must return a floating-point tensor (it is differentiated), got {probe.dtype}; "
                             f"compute it in {theta.dtype}.")
        check_finite(probe, "target(params)", "The target must be finite at params.")
        self.scalar = probe.ndim == 0
        self.n_targets = 1 if self.scalar else probe.shape[0]
        self._baseline: torch.Tensor | None = None

    def _probe(self, declared: bool | None) -> object:
        """``target`` at ``theta_hat`` (and the full mask); a detected mask-aware target that fails says how to declare it."""
        params = self.unflatten(self.theta)
        if not self.mask_aware:
            return self.function(params)
        try:
            return self.function(params, self.ones)
        except (TypeError, RuntimeError, IndexError, ValueError) as error:
            if declared is not None or (isinstance(error, RuntimeError) and DTYPE_PATTERN.search(str(error))):
                raise
            raise InputError(
                f"target has two required positional parameters, so it was taken to be mask-aware, target(params, "
                f"mask), but calling it with the mask failed ({error}). If its second parameter is not the mask, "
                "pass target_takes_mask=False and bind the other argument (functools.partial or a default value); "
                "if it is, pass target_takes_mask=True and make it accept a float mask of shape (n_units,)."
            ) from error

    def __call__(self, theta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``f(theta, mask)`` as a vector ``(n_targets,)``; ``mask`` is ignored by a target that does not take it."""
        params = self.unflatten(theta)
        value = self.function(params, mask) if self.mask_aware else self.function(params)
        value = value.to(theta.dtype)  # a float32 target of float64 params: results in the parameters' dtype
        return value.reshape(-1) if value.ndim == 0 else value

    def jacobian(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``d f / d theta`` at ``theta_hat`` (and ``mask``, default the full mask): ``(n_targets, n_params)``, finite."""
        mask = self.ones if mask is None else mask
        return check_finite(jacrev(self)(self.theta, mask), "the gradient of the target")

    def check_gradient(self) -> None:
        """Raise when the target's gradient at ``theta_hat`` is identically zero (detached, ``.item()``, constant)."""
        value, pullback = vjp(lambda theta: self(theta, self.ones), self.theta)
        if bool(pullback(torch.ones_like(value))[0].ne(0).any()):  # one reverse pass; the Jacobian only if needed
            return
        if not bool(jacrev(self)(self.theta, self.ones).ne(0).any()):
            raise InputError(
                "The target's gradient with respect to params is exactly zero at params, so every influence would "
                "be 0: does the target detach its input, call .item()/float()/numpy, or not depend on params? "
                "Compute it with torch operations on params."
            )

    def change(self, theta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``f(theta, mask) - f(theta_hat, mask)``, ``(n_targets,)``: the change a refit at ``mask`` caused.

        A target that does not take the mask is compared at the same point whatever ``mask`` is.
        """
        if self.mask_aware:
            return self(theta, mask) - self(self.theta, mask)
        if self._baseline is None:
            self._baseline = self(self.theta, self.ones)
        return self(theta, mask) - self._baseline

    def shaped(self, rows: torch.Tensor) -> torch.Tensor:
        """Results ``(n_removals, n_targets)`` in the caller's shape: ``(n_removals,)`` for a scalar target."""
        return rows[:, 0] if self.scalar else rows
