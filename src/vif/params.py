"""Parameters as one flat vector, and the checks every module applies to masks and values.

Parameters may be a single tensor or a dict of tensors. They are flattened in the dict's iteration
order (insertion order), each tensor in row-major (C) order; a single tensor is flattened row-major.
This is the column order of :func:`vif.parameter_influence`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from .errors import InputError, MaskError, NonFiniteError

Params = torch.Tensor | Mapping[str, torch.Tensor]

__all__ = ["Params", "flatten", "check_mask", "check_finite", "full_mask", "removal_mask", "DTYPE_PATTERN"]

#: torch's messages for an operation on tensors of two dtypes (objective or target data vs params)
DTYPE_PATTERN = re.compile(r"dtype|scalar type|Double|Float|Half|BFloat16", re.IGNORECASE)


def flatten(params: Params) -> tuple[torch.Tensor, Callable[[torch.Tensor], Params]]:
    """Flatten parameters into one vector.

    Args:
        params: a floating-point tensor, or a dict of floating-point tensors of one dtype and device.

    Returns:
        ``(theta, unflatten)``: ``theta`` has shape ``(n_params,)`` and is detached;
        ``unflatten(theta)`` rebuilds the original structure (it is differentiable and vmap-safe).

    Raises:
        InputError: the parameters are not floating point tensors, mix dtypes or devices, or are empty.
    """
    if isinstance(params, torch.Tensor):
        _check_float(params, "params")
        shape = params.shape
        return params.detach().reshape(-1), lambda theta: theta.reshape(shape)
    if isinstance(params, Mapping):
        if not params:
            raise InputError("params is an empty dict; pass at least one tensor.")
        names = list(params)
        for name in names:
            _check_float(params[name], f"params[{name!r}]")
        first = params[names[0]]
        for name in names[1:]:
            if params[name].dtype != first.dtype or params[name].device != first.device:
                raise InputError(
                    f"params[{name!r}] is {params[name].dtype} on {params[name].device} but "
                    f"params[{names[0]!r}] is {first.dtype} on {first.device}; "
                    "convert all parameters to one dtype and device."
                )
        shapes = [params[name].shape for name in names]
        sizes = [params[name].numel() for name in names]
        theta = torch.cat([params[name].detach().reshape(-1) for name in names])

        def unflatten(vector: torch.Tensor) -> dict[str, torch.Tensor]:
            pieces = torch.split(vector, sizes)
            return {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}

        return theta, unflatten
    raise InputError(
        f"params must be a tensor or a dict of tensors, got {type(params).__name__}; "
        "wrap numpy arrays with torch.as_tensor(..., dtype=torch.float64)."
    )


def _check_float(tensor: object, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise InputError(f"{name} has dtype {tensor.dtype}; influence needs float32 or float64 parameters.")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        raise InputError(
            f"{name} has dtype {tensor.dtype}; half precision cannot resolve the small gradient changes influence "
            "measures. vif supports float64 (recommended) and float32: pass params.to(torch.float64) (and data)."
        )
    if tensor.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(tensor.shape)}).")


def check_mask(mask: torch.Tensor, n_units: int, *, name: str = "mask") -> torch.Tensor:
    """Validate a unit mask and return it.

    Args:
        mask: float tensor of shape ``(n_units,)``; 1 keeps a unit, 0 removes it, values in between
            down-weight it (used by the infinitesimal influence and the eps path).
        n_units: the number of units the objective was built for.
        name: the argument name used in error messages.

    Raises:
        MaskError: wrong type, dtype, shape, or non-finite values.
    """
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"{name} must be a torch.Tensor of shape ({n_units},), got {type(mask).__name__}.")
    if not mask.is_floating_point():
        raise MaskError(
            f"{name} has dtype {mask.dtype}; pass a float mask (e.g. mask.to(torch.float64)) so that it "
            "can be differentiated."
        )
    if mask.shape != (n_units,):
        raise MaskError(
            f"{name} has shape {tuple(mask.shape)} but the objective has {n_units} units; "
            f"pass a mask of shape ({n_units},) with 1 for kept and 0 for removed units."
        )
    return mask


def check_finite(value: torch.Tensor, what: str, remedy: str = "") -> torch.Tensor:
    """Raise :class:`NonFiniteError` naming ``what`` if ``value`` has a NaN or infinite entry."""
    if not bool(torch.isfinite(value).all()):
        n_bad = int((~torch.isfinite(value)).sum())
        message = f"{what} has {n_bad} non-finite value(s) (NaN or inf)."
        raise NonFiniteError(f"{message} {remedy}".strip())
    return value


def full_mask(n_units: int, like: torch.Tensor) -> torch.Tensor:
    """All-ones mask of shape ``(n_units,)`` with the dtype and device of ``like``."""
    return torch.ones(n_units, dtype=like.dtype, device=like.device)


def removal_mask(n_units: int, unit: int, like: torch.Tensor) -> torch.Tensor:
    """Mask ``1_{-unit}``: ones everywhere except a zero at ``unit``; dtype and device of ``like``."""
    mask = full_mask(n_units, like)
    mask[unit] = 0.0
    return mask
