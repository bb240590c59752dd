"""The one check of an L2 penalty argument, shared by every task that takes ``l2`` (private)."""

from __future__ import annotations

import math

from ..errors import InputError


def check_l2(l2: float) -> float:
    """``float(l2)``, after checking that it is a finite number ``>= 0``.

    Raises:
        InputError: ``l2`` is not a real number, is NaN or infinite, or is negative (``--l2 nan`` used to
            surface later as a non-finite objective at the start point).
    """
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) and not hasattr(l2, "__float__"):
        raise InputError(f"l2 (the L2 penalty) must be a number, got {l2!r}.")
    value = float(l2)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"l2 (the L2 penalty) must be a finite number >= 0, got {l2!r}; pass e.g. l2=1.0, or 0 "
                         "for no penalty.")
    return value
