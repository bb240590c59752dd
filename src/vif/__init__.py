"""vif: Versatile Influence Functions for losses that do not decompose over data points.

Sign convention (used everywhere in this package): the influence of unit ``i`` on a quantity ``f`` is the
predicted change ``f(theta_without_i) - f(theta_hat)``; positive means that removing ``i`` raises ``f``.

Objectives are plain functions ``objective(params, mask) -> scalar tensor`` where ``mask`` has shape
``(n_units,)``: all ones is the full data and ``mask[i] = 0`` removes unit ``i`` everywhere it appears.
Task models live in submodules that are imported on first use: :mod:`vif.logistic`, :mod:`vif.pairwise`,
:mod:`vif.cox`, :mod:`vif.embedding`, :mod:`vif.ranking`, :mod:`vif.datasets`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import errors, fit, metrics, params
from .influence import influence, parameter_influence
from .loo import leave_one_out

try:
    __version__ = version("vif")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_LAZY_SUBMODULES = {
    "cox", "cox_experiment", "embedding", "embedding_experiment", "ranking", "ranking_experiment",
    "logistic", "pairwise", "datasets", "plotting", "hessian", "threads", "cli",
}

__all__ = [
    "__version__",
    "errors",
    "fit",
    "influence",
    "leave_one_out",
    "metrics",
    "parameter_influence",
    "params",
]


def __getattr__(name: str) -> Any:
    """Import task submodules (``vif.cox``, ...) on first attribute access; they pull heavy dependencies."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vif' has no attribute {name!r}")
