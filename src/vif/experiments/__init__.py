"""Chapter back-ends: one module per experiment, found by name (the registry is this folder).

Module ``vif/experiments/<name>.py`` is the experiment ``<name>`` with underscores written as hyphens
(``node_embedding.py`` is ``python -m vif reproduce node-embedding``). Each defines
``add_arguments(parser)`` (its own CLI options) and ``reproduce(*, quick, seed, **options) -> Comparison``
(:class:`._results.Comparison`: estimates, truth, correlations, timings; ``to_json()`` has the same keys for
every experiment). Adding an experiment is adding one file here; modules whose names start with ``_`` are
private helpers shared by the experiments (set-ups, the result type), and no experiment imports another.

Experiments import the core and :mod:`vif.tasks`; nothing in the core or the tasks imports them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from ._results import Comparison

__all__ = ["names", "load", "Comparison"]


def names() -> list[str]:
    """The registered experiment names, sorted."""
    return sorted(info.name.replace("_", "-") for info in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not info.name.startswith("_"))


def load(name: str) -> ModuleType:
    """The module of experiment ``name`` (e.g. ``"node-embedding"``)."""
    if name not in names():
        raise KeyError(f"unknown experiment {name!r}; registered: {', '.join(names())}")
    return importlib.import_module(f".{name.replace('-', '_')}", __name__)
