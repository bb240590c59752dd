"""Fitted set-ups shared by several experiments: a Cox model, a skip-gram embedding, a listwise ranker.

Each experiment module re-exports the set-up it studies (:mod:`.cox`, :mod:`.node_embedding`,
:mod:`.ranking`); :mod:`.groups` and :mod:`.trust` build their cases from here, so that no experiment
imports another.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..datasets.graphs import load_graph
from ..datasets.ranking import RankingData, load
from ..datasets.survival import DATASETS, SurvivalSplit, split
from ..tasks import cox, embedding, ranking

__all__ = ["QUICK_UNITS", "CoxSetup", "cox_setup", "EmbeddingSettings", "embedding_settings", "EmbeddingSetup",
           "embedding_setup", "RankingSetup", "ranking_sizes", "ranking_setup"]

QUICK_UNITS = 150  # Cox LOO units under --quick (a seeded subsample of the training patients)


# --- Cox regression on a survival dataset ------------------------------------------------------------------------
@dataclass
class CoxSetup:
    """A fitted Cox model on a dataset's training split, with its objective and targets.

    Attributes:
        name: dataset name. data: the split. ties: tie method of every fit here.
        train: ``(x (n, p), time (n,), event (n,))`` the training patients used (standardised covariates).
        rows_train / rows_test: their rows in ``data.dataset.frame``.
        task: the Cox task over the training patients (:class:`vif.tasks.cox.CoxRegression`, Newton to
            ``max|grad| <= 1e-9``); ``objective`` is its masked objective.
        beta_hat: exact fit ``(p,)``. target: ``beta -> (n_test + 1,)``: test relative hazards, then the
            test partial log-likelihood. units: training patients whose removal is studied ``(n_units,)``.
    """

    name: str
    data: SurvivalSplit
    ties: str
    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    rows_train: np.ndarray
    rows_test: np.ndarray
    task: cox.CoxRegression
    beta_hat: torch.Tensor
    target: Any
    units: torch.Tensor

    @property
    def objective(self) -> Any:
        """``objective(beta, mask)`` of the task."""
        return self.task.objective

    @property
    def n_train(self) -> int:
        """Training patients (units of the objective)."""
        return int(self.train[0].shape[0])


def cox_setup(dataset: str, *, quick: bool, seed: int = 0, ties: str = "efron", n_train: int | None = None,
              n_targets: int | None = None, **loader_options: Any) -> CoxSetup:
    """Load, split (seeded), fit exactly, and choose the units.

    Args:
        dataset: a key of :data:`vif.datasets.survival.DATASETS`.
        quick: study ``QUICK_UNITS`` seeded training patients instead of all.
        seed: seed of the split and of every subsample.
        ties: ``"efron"`` (default) or ``"breslow"``.
        n_train / n_targets: optional seeded subsamples of the training / test patients (speed sweeps).
    """
    data = split(DATASETS[dataset](**loader_options), seed=seed)
    rng = np.random.default_rng(seed)
    x, time_, event = data.part("train")
    x_test, time_test, event_test = data.part("test")
    rows_train, rows_test = np.arange(len(x)), np.arange(len(x_test))
    if n_train is not None and n_train < len(x):
        rows_train = np.sort(rng.choice(len(x), n_train, replace=False))
    if n_targets is not None and n_targets < len(x_test):
        rows_test = np.sort(rng.choice(len(x_test), n_targets, replace=False))
    train = (x[rows_train], time_[rows_train], event[rows_train])
    task = cox.CoxRegression(*train, ties=ties)
    n = len(rows_train)
    beta_hat = task.fit()
    hazard = cox.relative_hazard(x_test[rows_test])
    loglik = cox.log_partial_likelihood(x_test[rows_test], time_test[rows_test], event_test[rows_test], ties=ties)

    def target(beta: torch.Tensor) -> torch.Tensor:
        return torch.cat([hazard(beta), loglik(beta)[None]])

    units = torch.arange(n, device="cpu")
    if quick and n > QUICK_UNITS:
        units = torch.sort(torch.from_numpy(rng.choice(n, QUICK_UNITS, replace=False)))[0]
    return CoxSetup(dataset, data, ties, train, data.rows_train[rows_train], data.rows_test[rows_test], task,
                    beta_hat, target, units)



# --- skip-gram node embedding ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingSettings:
    """Everything that defines one experiment (and its cache key)."""

    graph: str = "karate"
    dim: int = 2
    window: int = 3
    walk_length: int = 6
    l2: float = 0.3  # weight of the mean squared embedding norm per node (see vif.embedding)
    expected: bool = True
    n_pairs: int = 0  # 0: all ordered pairs (j, k), j != k; otherwise a seeded sample of that many
    n_links: int = 0  # 0: all unordered pairs j < k; otherwise a seeded sample
    n_nodes: int = 200  # sbm only
    seed: int = 0
    dampings: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    gtol: float = 1e-10  # max |grad| of every fit and refit

    def key(self) -> str:
        """A stable string naming the settings, for cache keys."""
        return json.dumps(asdict(self), sort_keys=True)


def embedding_settings(*, quick: bool, graph: str = "karate", dim: int = 2, seed: int = 0,
                       **overrides) -> EmbeddingSettings:
    """The book's settings: every pair on karate; seeded samples of 600 pairs on larger graphs."""
    large = graph != "karate"
    values = dict(graph=graph, dim=dim, seed=seed, n_pairs=600 if large else 0, n_links=300 if large else 0,
                  dampings=(1e-2, 1.0) if quick else (1e-3, 1e-2, 1e-1, 1.0))
    values.update(overrides)
    return EmbeddingSettings(**values)


@dataclass
class EmbeddingSetup:
    """A fitted embedding with its targets: ``target(params, mask)`` returns pair losses then link scores."""

    settings: EmbeddingSettings
    graph: object
    loss: embedding.SkipGram
    params: dict[str, torch.Tensor]
    pairs: torch.Tensor  # (n_pairs, 2) ordered (centre, context)
    links: torch.Tensor  # (n_links, 2) unordered
    fit_seconds: float
    _pair_loss: object = field(repr=False, default=None)
    _link_score: object = field(repr=False, default=None)

    @property
    def n_units(self) -> int:
        """Number of nodes."""
        return self.loss.n_units

    def link_target(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Link scores only (n_links,): a plain target (no mask), for timings."""
        return self._link_score(params)

    def target(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Pair losses (n_pairs,) then link scores (n_links,), concatenated: shape (n_pairs + n_links,)."""
        return torch.cat([self._pair_loss(params, mask), self._link_score(params)])

    def valid(self) -> torch.Tensor:
        """(n_units, n_targets) bool: False where the removed node belongs to the target's pair."""
        both = torch.cat([self.pairs, self.links])
        nodes = torch.arange(self.n_units, device=both.device)[:, None, None]
        return ~(both[None] == nodes).any(dim=2)

    @property
    def split(self) -> dict[str, slice]:
        """Column ranges of the two target families."""
        n = len(self.pairs)
        return {"pair_loss": slice(0, n), "link_score": slice(n, n + len(self.links))}


def _sample(candidates: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    if size <= 0 or size >= len(candidates):
        return candidates
    generator = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(len(candidates), generator=generator, device="cpu")[:size].sort().values]


def embedding_setup(config: EmbeddingSettings) -> EmbeddingSetup:
    """Load the graph, fit ``theta_hat`` from the seeded cold start and choose the target pairs."""
    graph = load_graph(config.graph, n_nodes=config.n_nodes, seed=config.seed)
    loss = embedding.objective(graph, dim=config.dim, window=config.window, walk_length=config.walk_length,
                               l2=config.l2, expected=config.expected, seed=config.seed)
    loss.gtol = config.gtol  # every fit and refit of the task (cold starts use loss.seed = config.seed)
    start = time.perf_counter()
    params = loss.fit()
    seconds = time.perf_counter() - start
    n = loss.n_units
    nodes = torch.arange(n, device="cpu")
    rows, cols = torch.meshgrid(nodes, nodes, indexing="ij")
    ordered = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    pairs = _sample(ordered[ordered[:, 0] != ordered[:, 1]], config.n_pairs, config.seed)
    links = _sample(ordered[ordered[:, 0] < ordered[:, 1]], config.n_links, config.seed + 1)
    return EmbeddingSetup(config, graph, loss, params, pairs, links, seconds,
                 embedding.pair_loss(pairs), embedding.link_score(links))



# --- listwise learning-to-rank ---------------------------------------------------------------------------------
def ranking_sizes(dataset: str, quick: bool) -> dict[str, int]:
    """Training and test queries, and the number of items whose removal is studied (``None``: all)."""
    delicious = "delicious" in str(dataset)
    if quick:
        return dict(n_train=300 if delicious else 1000, n_test=100 if delicious else 200, n_units=6 if delicious else 20)
    return dict(n_train=5000, n_test=500, n_units=50 if delicious else None)



@dataclass
class RankingSetup:
    """A fitted linear scorer on one dataset with one loss.

    Attributes:
        data: the queries. loss, l2: the objective's loss and weight decay. objective: ``L(params, mask)``.
        params: the full-data fit. target: mask-aware test losses ``(params, mask) -> (n_test,)``.
        unmasked: test losses on the full lists ``params -> (n_test,)``. units: studied items ``(n_units,)``.
        valid: bool ``(n_units, n_test)``, False where removing the unit empties the test query's relevant set.
        fit_seconds: time of the full-data fit.
    """

    data: RankingData
    loss: str
    l2: float
    task: ranking.ListwiseRanking
    params: dict
    target: Any
    unmasked: Any
    units: torch.Tensor
    valid: np.ndarray
    fit_seconds: float

    @property
    def objective(self) -> Any:
        """``L(params, mask)`` of the task."""
        return self.task.objective

    @property
    def key(self) -> str:
        """Cache key naming the data and the configuration."""
        d = self.data
        return f"{d.name}-{d.X_train.shape[0]}x{d.n_items}-{self.loss}-l2={self.l2}"


def ranking_setup(dataset: str, loss: str, *, quick: bool, seed: int = 0, l2: float = 5e-4,
                  **size_overrides: int) -> RankingSetup:
    """Load the data (synthetic by default), fit the scorer, build the targets and pick the items.

    ``size_overrides`` replace entries of :func:`ranking_sizes` (``n_train``, ``n_test``, ``n_units``).
    """
    size = {**ranking_sizes(dataset, quick), **size_overrides}
    data = load(dataset, n_train=size["n_train"], n_test=size["n_test"], seed=seed)
    task = ranking.ListwiseRanking(data.X_train, data.Y_train, loss=loss, l2=l2)
    start = time.perf_counter()
    params = task.fit()
    fit_seconds = time.perf_counter() - start
    n_items = data.n_items
    if size["n_units"] is None or size["n_units"] >= n_items:
        units = torch.arange(n_items, device="cpu")
    else:
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed), device="cpu")
        units = torch.sort(order[: size["n_units"]]).values
    return RankingSetup(
        data, loss, l2, task, params,
        ranking.target(data.X_test, data.Y_test, loss=loss), ranking.target(data.X_test, data.Y_test, loss=loss, masked=False),
        units, ~ranking.emptied_queries(data.Y_test, units.numpy()), fit_seconds,
    )
