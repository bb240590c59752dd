"""vif: Versatile Influence Functions for losses that do not decompose over data points.

Sign convention (used everywhere in this package): the influence of unit ``i`` on a quantity ``f`` is the
predicted change ``f(theta_without_i) - f(theta_hat)``; positive means that removing ``i`` raises ``f``.

Objectives are plain functions ``objective(params, mask) -> scalar tensor`` where ``mask`` has shape
``(n_units,)``: all ones is the full data and ``mask[i] = 0`` removes unit ``i`` everywhere it appears.
A task (:class:`vif.task.Task`) bundles one with its fit. Layout: the core (this package's top-level
modules), :mod:`vif.tasks` (one module per task model), :mod:`vif.experiments` (one module per chapter
back-end), :mod:`vif.datasets`, :mod:`vif.plotting`, :mod:`vif.cli`. The core never imports tasks or
experiments; tasks never import experiments. Heavy submodules are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import datamodels, errors, fit, forward, hessian, metrics, params, pbrf, solvers, structured, target, trust
from .influence import influence, parameter_influence
from .loo import leave_one_out
from .task import Task

try:
    __version__ = version("vif")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_LAZY_SUBMODULES = {"tasks", "experiments", "datasets", "plotting", "threads", "cli"}

__all__ = [
    "Task",
    "__version__",
    "datamodels",
    "errors",
    "fit",
    "forward",
    "hessian",
    "influence",
    "leave_one_out",
    "metrics",
    "parameter_influence",
    "params",
    "pbrf",
    "solvers",
    "structured",
    "target",
    "trust",
]


def __getattr__(name: str) -> Any:
    """Import submodules (``vif.tasks``, ``vif.experiments``, ...) on first attribute access."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vif' has no attribute {name!r}")
