"""Task models: one module per model, each providing the task contract of :class:`vif.task.Task`.

The folder is the registry: every public module here is in :data:`MODULES` (and ``__all__``) and is imported
on first attribute access (``vif.tasks.cox``). :func:`task_classes` finds the task classes in them; the API
page tabulates them with their units, and the architecture test checks each one's contract. Adding a task
is adding its module (plus its tests and, if it has one, its chapter).

Tasks import the core (:mod:`vif.fit`, :mod:`vif.params`, ...) and never :mod:`vif.experiments`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

MODULES = tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")))

__all__ = [*MODULES, "MODULES", "task_classes"]


def __getattr__(name: str) -> Any:
    """Import ``vif.tasks.<name>`` on first access."""
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vif.tasks' has no attribute {name!r}")


def task_classes() -> list[type]:
    """Every task class of the task modules, in the order of :data:`MODULES` then of definition.

    A task class is a public class defined in one of :data:`MODULES` (not imported into it) with callable
    ``objective`` and ``fit`` attributes; whether its instances keep the rest of the contract (``n_units``,
    the mask) is what the tests check. Imports every task module.
    """
    found = []
    for name in MODULES:
        module = importlib.import_module(f".{name}", __name__)
        found += [value for attribute, value in vars(module).items()
                  if inspect.isclass(value) and value.__module__ == module.__name__ and not attribute.startswith("_")
                  and callable(getattr(value, "objective", None)) and callable(getattr(value, "fit", None))]
    return found
