"""The task contract: what a model must provide for influence and leave-one-out.

Every module in :mod:`vif.tasks` provides a class that satisfies :class:`Task`. The engine needs nothing
else: :func:`vif.influence` reads ``objective`` and ``n_units``, :func:`vif.leave_one_out` calls ``fit``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .params import Params

__all__ = ["Task", "is_task"]


@runtime_checkable
class Task(Protocol):
    """A model with a unit mask.

    Attributes:
        n_units: length of the mask (patients, nodes, items, samples, ...).

    Contract:
        * ``objective(params, mask) -> scalar tensor``: ``mask`` has shape ``(n_units,)``, all ones is the full
          data, ``mask[i] = 0`` removes unit ``i`` everywhere it appears (values in between down-weight it).
          Deleting unit ``i`` from the data and setting ``mask[i] = 0`` give the same objective (tests check
          this for every task). The objective includes any penalty the fit minimises.
        * ``fit(mask=None, init=None) -> params``: the minimiser of ``objective(., mask)`` (``None``: all
          ones), started from ``init`` (warm start) or from the task's own seeded cold start (``None``). It
          raises :class:`vif.errors.ConvergenceError` when it does not converge.
        * ``gtol`` (optional): the largest ``max|grad|`` that ``fit`` accepts; :func:`vif.leave_one_out`
          refuses a refit above it (``RefitError``, or marked failed with ``on_error="skip"``) and keys its
          cache on it. Without it a refit is judged by the stationarity rule of :mod:`vif.checks`.
        * Data and settings live in public attributes or dataclass fields: the leave-one-out cache key hashes
          them (tensors, arrays, numbers, nested configs); private ``_name`` attributes are taken for caches
          (a factorised Hessian) and are not hashed.
        * ``mask_gradient_differences(params, masks) -> (k, n_params)`` (optional fast path): the flat
          ``grad L(params, masks[j]) - grad L(params, 1)`` for a block of masks ``(k, n_units)``, in the order
          of :func:`vif.params.flatten`. When a task has it, :func:`vif.influence` (``method="vif"``) uses it
          instead of autodiff; pass ``task.objective`` and ``n_units`` instead of the task to get the autodiff
          path, which is the reference the fast path is tested against.
        * ``mask_change_gradient_differences(params, rows, units, values, k)`` (optional): the same differences
          for masks given sparsely (mask entries ``units`` set to ``values`` in row ``rows`` of ``k`` masks),
          so no dense ``(k, n_units)`` mask is built; preferred over the dense hook when present.
        * ``mask_linear`` (optional, bool): the objective is linear in the mask (a sum of per-unit terms); VIF
          then equals the IF and takes its one-pass Jacobian route. The engine verifies the declaration on a
          few masks and raises when it is wrong; without it, linearity is detected when there are many removals.
    """

    n_units: int

    def objective(self, params: Params, mask: torch.Tensor) -> torch.Tensor:
        """The masked objective, a scalar."""
        ...

    def fit(self, mask: torch.Tensor | None = None, init: Params | None = None) -> Params:
        """Minimise the objective at ``mask`` (raise ``ConvergenceError`` if that fails)."""
        ...


def is_task(value: object) -> bool:
    """Whether ``value`` provides the task contract (``objective``, ``fit``, ``n_units``)."""
    return isinstance(value, Task) and callable(getattr(value, "objective", None)) and callable(getattr(value, "fit", None))
