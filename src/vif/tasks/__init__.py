"""Task models: one module per model, each providing the task contract of :class:`vif.task.Task`.

==================  =====================================  ==========================
module              task class                              units
==================  =====================================  ==========================
``logistic``        :class:`~vif.tasks.logistic.LogisticRegression`     training examples
``pairwise``        :class:`~vif.tasks.pairwise.PairwiseRanking`        items (all pairs)
``cox``             :class:`~vif.tasks.cox.CoxRegression`               patients
``embedding``       :class:`~vif.tasks.embedding.SkipGram`              graph nodes
``ranking``         :class:`~vif.tasks.ranking.ListwiseRanking`         items (labels)
``neural_cox``      :class:`~vif.tasks.neural_cox.NeuralCox`            patients
``contrastive``     :class:`~vif.tasks.contrastive.Contrastive`         samples (InfoNCE)
==================  =====================================  ==========================

Tasks import the core (:mod:`vif.fit`, :mod:`vif.params`, ...) and never :mod:`vif.experiments`.
Submodules are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

MODULES = ("logistic", "pairwise", "cox", "embedding", "ranking", "ranking_hessian", "neural_cox", "contrastive")

__all__ = list(MODULES)


def __getattr__(name: str) -> Any:
    """Import ``vif.tasks.<name>`` on first access."""
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vif.tasks' has no attribute {name!r}")
