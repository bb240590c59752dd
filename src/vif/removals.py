"""What is removed, row by row: single units (``units=``) or whole groups of units (``groups=``).

A removal is the indicator ``r`` of the units it deletes (``r_j = 1``); the objective is evaluated at the mask
``1 - eps r``. A unit is a group of one. Groups may overlap: each group is removed on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["Removals", "as_groups"]


class Removals:
    """What is removed, row by row: single units (``units``) or groups of units (``groups``)."""

    def __init__(self, n_units: int, like: torch.Tensor, index: torch.Tensor | None,
                 groups: list[torch.Tensor] | None) -> None:
        self.n_units, self.like, self.index, self.groups = n_units, like, index, groups

    @classmethod
    def select(cls, n_units: int, like: torch.Tensor, units: Sequence[int] | torch.Tensor | None,
               groups: Sequence | torch.Tensor | None) -> Removals:
        """Validate ``units`` or ``groups`` (see :func:`vif.influence`); ``like``: the flat parameters."""
        n, device = n_units, like.device
        if units is not None and groups is not None:
            raise InputError("Pass units= (single removals) or groups= (group removals), not both.")
        if groups is not None:
            return cls(n, like, None, as_groups(groups, n, device))
        if units is None:
            return cls(n, like, torch.arange(n, device=device), None)
        index = torch.as_tensor(units, device=device)
        if index.numel() == 0 and index.ndim <= 1:
            raise InputError("units is empty; pass at least one unit index, or units=None for all units.")
        if index.ndim != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise InputError(f"units must be a 1-D sequence of integer unit indices, got {tuple(index.shape)} {index.dtype}.")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise InputError(f"units must lie in [0, {n}); got values from {int(index.min())} to {int(index.max())}.")
        return cls(n, like, index.long(), None)

    def __len__(self) -> int:
        return len(self.index) if self.groups is None else len(self.groups)

    def members(self, row: int) -> torch.Tensor:
        """Units removed in ``row``, 1-D long tensor."""
        return self.index[row:row + 1] if self.groups is None else self.groups[row]

    def label(self, row: int) -> str:
        """How error messages name ``row``."""
        return f"unit {int(self.index[row])}" if self.groups is None else f"group {row}"

    def directions(self, rows: torch.Tensor) -> torch.Tensor:
        """Removal indicators ``r`` of ``rows``, shape ``(len(rows), n_units)``, dtype of the parameters."""
        out = self.like.new_zeros(len(rows), self.n_units)
        for position, row in enumerate(rows.tolist()):
            out[position, self.members(row)] = 1.0
        return out

    def combine(self, per_unit: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_j r_j per_unit[j]`` for each row: ``per_unit`` ``(n_units, k)`` -> ``(len(rows), k)``."""
        rows = torch.arange(len(self), device=per_unit.device) if rows is None else rows
        if self.groups is None:
            return per_unit[self.index[rows]]
        return self.directions(rows).to(per_unit.dtype) @ per_unit


def as_groups(groups: Sequence | torch.Tensor, n_units: int, device: torch.device) -> list[torch.Tensor]:
    """A list of index arrays, or a label vector of length ``n_units`` (negative label: in no group)."""
    if isinstance(groups, str) or len(groups) == 0:
        raise InputError("groups must be a non-empty list of index arrays or a label vector of length n_units.")
    if all(np.ndim(group) == 0 for group in groups):  # a label vector
        labels = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups, device=device)
        if labels.shape != (n_units,) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise InputError(f"groups as a label vector must hold one integer label per unit ({n_units}), "
                             f"got shape {tuple(labels.shape)} {labels.dtype}.")
        found = [torch.nonzero(labels == value).reshape(-1) for value in torch.unique(labels) if int(value) >= 0]
    else:
        found = [torch.as_tensor(np.asarray(group) if not isinstance(group, torch.Tensor) else group,
                                 device=device).reshape(-1) for group in groups]
    result = []
    for position, group in enumerate(found):
        if group.numel() == 0:
            raise InputError(f"groups[{position}] is empty; every group must remove at least one unit.")
        if group.is_floating_point() or group.dtype == torch.bool:
            raise InputError(f"groups[{position}] must hold integer unit indices, got {group.dtype}.")
        if int(group.min()) < 0 or int(group.max()) >= n_units:
            raise InputError(f"groups[{position}] has unit indices outside [0, {n_units}).")
        result.append(torch.unique(group.long()))
    if not result:
        raise InputError("groups is empty; pass at least one group of unit indices.")
    return result
