"""The one result type of every experiment back-end: estimates against ground truths, in one vocabulary.

Every back-end's ``reproduce`` returns a :class:`Comparison`, and so do the functions the chapters call to
compare estimates with refits; ``python -m vif reproduce <name>`` writes :meth:`Comparison.to_json`, which
has the same keys for every back-end: ``settings``, ``correlations``, ``timings``, ``details``, ``parts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..metrics import Correlations

__all__ = ["Comparison", "jsonable"]


@dataclass
class Comparison:
    """Estimates of one experiment against its ground truths.

    Attributes:
        settings: what defines the run and its sizes (dataset, units, targets, hyper-parameters); JSON-ready.
        estimates: name -> predicted changes ``(n_removals, n_targets)`` (``"vif"``, ``"if"``, ...).
        truth: name -> actual changes ``(n_removals, n_targets)`` (``"loo"``, ``"warm"``, ``"pbrf"``, ...).
        correlations: estimate (then truth, target family or group size, as the back-end documents) ->
            agreement with the truth: :class:`vif.metrics.Correlations` or ``{"pearson": ..., ...}``.
        timings: name -> wall-clock seconds.
        details: the back-end's other numbers (relative errors, ratios, sweeps, tables); JSON-ready.
        parts: named sub-comparisons (one per loss, model, case, weight decay), serialised the same way.
        setup: the fitted problem the estimates come from (not serialised).
        tensors: other raw arrays the chapters plot (not serialised).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    estimates: dict[str, torch.Tensor] = field(default_factory=dict)
    truth: dict[str, torch.Tensor] = field(default_factory=dict)
    correlations: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Comparison] = field(default_factory=dict)
    setup: Any = field(default=None, repr=False)
    tensors: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """``{"settings", "correlations", "timings", "details", "parts"}``, JSON-serialisable (tensors left out)."""
        return {"settings": jsonable(self.settings), "correlations": jsonable(self.correlations),
                "timings": jsonable(self.timings), "details": jsonable(self.details),
                "parts": {str(name): part.to_json() for name, part in self.parts.items()}}


def jsonable(value: Any) -> Any:
    """``value`` with correlations as dicts, scalars as Python numbers, tuples as lists and keys as strings."""
    if isinstance(value, Correlations):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    return value
