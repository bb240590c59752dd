"""Removing many units at once: group VIF, summed single VIFs, group IF, a second-order step and Forward-INF.

For each task (Cox on SUPPORT, node embedding on karate and an SBM graph, listwise ranking) we remove whole
groups (random groups of several sizes, plus groups a user would ask about: clinical strata, graph communities,
co-occurring items), refit exactly without each group (:func:`vif.leave_one_out` with ``groups=``, cached) and
correlate five predictors with the actual change, per size:

* ``group VIF``: one finite difference with the whole group masked (``vif.influence(groups=...)``);
* ``summed VIF``: the sum of single-unit VIFs (the linear datamodel);
* ``group IF``: the infinitesimal influence of the group (= the sum of single IFs);
* ``2nd order``: group VIF plus one Neumann term of the Hessian without the group (:mod:`vif.datamodels`);
* ``Forward-INF``: gradient steps on the target, forward passes of the mask difference (:mod:`vif.forward`).

On Cox the linear datamodeling score (LDS) is measured on random subsets keeping a fraction ``alpha``.
Used by ``python -m vif reproduce groups`` and ``book/07_groups.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import torch

from ..datamodels import linear_datamodel, sample_subsets, second_order_influence, subset_changes
from ..forward import forward_influence
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import correlations, lds
from ..target import takes_mask
from ..threads import torch_threads
from ._results import Comparison
from ._setups import cox_setup, embedding_settings, embedding_setup, ranking_setup

__all__ = ["Case", "PREDICTORS", "random_groups", "local_groups", "sizes", "make_case", "cox_case",
           "embedding_case", "ranking_case", "predict",
           "group_curves", "single_scores", "lds_scores", "run", "table", "add_arguments", "reproduce"]

PREDICTORS = ("group VIF", "summed VIF", "group IF", "2nd order", "Forward-INF")
FORWARD_TARGETS = {True: 5, False: 10}  # Forward-INF costs n_targets x n_removals forward passes: K spread targets


@dataclass
class Case:
    """One fitted task with its targets and the groups a user would ask about.

    Attributes:
        name: label. task: the task (objective, fit, n_units). params: ``theta_hat``. target: plain or mask-aware.
        hessian: iHVP spec for every estimate. key: cache key. named: ``{label: index array}`` of meaningful groups.
        valid: ``groups -> bool (n_groups, n_targets)``, False where a target is undefined after the removal.
        order: units in an order where neighbours share risk sets / lists / neighbourhoods (time order, BFS order,
            items by co-occurrence community): contiguous blocks of it are *local* groups.
    """

    name: str
    task: Any
    params: Any
    target: Callable
    hessian: Any
    key: str
    named: dict[str, np.ndarray] = field(default_factory=dict)
    valid: Callable | None = None
    order: np.ndarray | None = None
    forward_targets: int = 10

    def forward_columns(self, n_targets: int) -> np.ndarray:
        """``forward_targets`` target columns spread evenly over all ``n_targets`` (first and last included)."""
        return np.unique(np.linspace(0, n_targets - 1, min(self.forward_targets, n_targets)).round().astype(int))

    def selected_targets(self) -> Callable:
        """The target restricted to :meth:`forward_columns` (same signature)."""
        target = self.target
        if takes_mask(target, None):
            ones = torch.ones(self.n_units, dtype=torch.float64, device="cpu")
            columns = torch.as_tensor(self.forward_columns(target(self.params, ones).numel()), device="cpu")
            return lambda params, mask: target(params, mask)[columns]
        columns = torch.as_tensor(self.forward_columns(target(self.params).numel()), device="cpu")
        return lambda params: target(params)[columns]

    @property
    def n_units(self) -> int:
        """Units of the task."""
        return int(self.task.n_units)


def random_groups(n_units: int, sizes: tuple[int, ...], per_size: int, seed: int) -> list[np.ndarray]:
    """``per_size`` seeded random groups of each size (sizes above ``n_units // 2`` are skipped)."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_units, size, replace=False)) for size in sizes if size <= n_units // 2
            for _ in range(per_size)]


def local_groups(order: np.ndarray, sizes: tuple[int, ...], per_size: int) -> list[np.ndarray]:
    """``per_size`` contiguous blocks of ``order`` of each size, evenly spaced along it."""
    n = len(order)
    return [np.sort(order[start:start + size]) for size in sizes if size <= n // 2
            for start in np.linspace(0, n - size, per_size).astype(int)]


def cox_case(*, quick: bool, seed: int) -> Case:
    """Cox on SUPPORT; named groups: cancer status (none / yes / metastatic) x age band (<50, 50-65, 65-80, 80+)."""
    s = cox_setup("support", quick=False, seed=seed, n_train=400 if quick else None, n_targets=30 if quick else 100)
    frame = s.data.dataset.frame.iloc[s.rows_train]
    band = np.digitize(frame["age"].to_numpy(), [50, 65, 80])
    cancer = frame["cancer"].to_numpy().astype(int)
    names = {0: "no cancer", 1: "cancer", 2: "metastatic"}
    bands = {0: "<50", 1: "50-65", 2: "65-80", 3: "80+"}
    named = {f"{names[c]}, {bands[b]}": np.flatnonzero((cancer == c) & (band == b)) for c in names for b in bands}
    named = {label: group for label, group in named.items() if len(group) >= 2}
    return Case("cox-support", s.task, s.beta_hat, s.target, "exact", f"groups|support|{s.n_train}|{seed}", named,
                order=s.task.data.order.numpy())


def embedding_case(graph: str, *, quick: bool, seed: int) -> Case:
    """Skip-gram node embedding; named groups: greedy-modularity communities of the graph."""
    overrides = dict(n_pairs=60, n_links=40) if quick else dict(n_pairs=300, n_links=150)
    config = embedding_settings(quick=quick, graph=graph, seed=seed, n_nodes=60, **overrides)
    problem = embedding_setup(config)
    graph_nx = nx.Graph(problem.graph.edge_index.T.tolist())
    communities = nx.algorithms.community.greedy_modularity_communities(graph_nx)
    order = np.array(list(nx.bfs_tree(graph_nx, 0)))
    named = {f"community {k}": np.array(sorted(c)) for k, c in enumerate(communities)}
    both = torch.cat([problem.pairs, problem.links]).numpy()

    def valid(groups: list[np.ndarray]) -> np.ndarray:
        return np.stack([~np.isin(both, group).any(axis=1) for group in groups])

    return Case(f"embedding-{graph}", problem.loss, problem.params, problem.target, "pinv",
                f"groups|{config.key()}", named, valid, order)


def ranking_case(*, quick: bool, seed: int) -> Case:
    """Listwise (softmax) ranking; named groups: greedy-modularity communities of the item co-occurrence graph."""
    s = ranking_setup("mediamill-like", "softmax", quick=True, seed=seed, n_train=200 if quick else 500,
                      n_test=40 if quick else 200)
    Y = s.data.Y_train.numpy() > 0
    counts = (Y.T.astype(float) @ Y.astype(float))
    np.fill_diagonal(counts, 0.0)
    graph = nx.from_numpy_array(counts)
    communities = nx.algorithms.community.greedy_modularity_communities(graph, weight="weight")
    named = {f"items {k}": np.array(sorted(c)) for k, c in enumerate(communities) if len(c) >= 2}
    popularity = Y.sum(0)
    order = np.concatenate([sorted(c, key=lambda item: -popularity[item]) for c in communities])
    relevant = s.data.Y_test.numpy() > 0

    def valid(groups: list[np.ndarray]) -> np.ndarray:
        kept = [np.delete(relevant, group, axis=1).any(axis=1) for group in groups]
        return np.stack(kept)

    return Case("ranking-softmax", s.task, s.params, s.target, s.task.hessian(s.params), f"groups|{s.key}|{seed}",
                named, valid, order)


def _timed(function: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def predict(case: Case, groups: list[np.ndarray], *, forward: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Every predictor for every group ``(n_groups, n_targets)``, and the seconds each took."""
    common = dict(hessian=case.hessian)
    out, seconds = {}, {}
    out["group VIF"], seconds["group VIF"] = _timed(influence, case.task, case.params, case.target, groups=groups, **common)
    single, seconds["single VIF"] = _timed(influence, case.task, case.params, case.target, **common)
    out["summed VIF"] = torch.stack([single[group].sum(0) for group in groups])
    out["group IF"], seconds["group IF"] = _timed(influence, case.task, case.params, case.target, groups=groups,
                                                  method="if", **common)
    out["2nd order"], seconds["2nd order"] = _timed(second_order_influence, case.task, case.params, case.target,
                                                    groups=groups, **common)
    if forward:
        out["Forward-INF"], seconds["Forward-INF"] = _timed(forward_influence, case.task, case.params,
                                                            case.selected_targets(), groups=groups)
    return out, seconds


def _pearson(predicted: torch.Tensor, actual: torch.Tensor, valid: np.ndarray | None) -> float:
    return correlations(predicted, actual, valid=valid).pearson


def _scores(predicted: dict[str, torch.Tensor], actual: torch.Tensor, valid: np.ndarray | None, rows: np.ndarray,
            across: str = "units", columns: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Mean Pearson (across the groups ``rows`` per target, or across targets per group) and relative error.

    A predictor with fewer columns (Forward-INF: the targets ``columns`` only) is compared on those columns.
    """
    out = {}
    for name, values in predicted.items():
        used = np.arange(actual.shape[1]) if values.shape[1] == actual.shape[1] else columns
        truth, keep = actual[rows][:, used], None if valid is None else valid[rows][:, used]
        out[name] = {"pearson": correlations(values[rows], truth, valid=keep, across=across).pearson,
                     "relative_error": float(torch.linalg.norm(values[rows] - truth) / torch.linalg.norm(truth))}
    return out


def group_curves(case: Case, sizes: tuple[int, ...], per_size: int, *, seed: int, cache_dir: Any = None,
                 progress: bool = False) -> Comparison:
    """Every predictor against exact group refits, per group size, for random and for local groups.

    Returns a :class:`Comparison`: ``estimates`` (every predictor, ``(n_groups, n_targets)``; Forward-INF on the
    spread targets only) against ``truth["refits"]``; ``correlations["random"][size][predictor]`` and
    ``["local"]`` (``{"pearson", "relative_error"}``: Pearson is the mean over targets of the correlation
    across the groups of one size) and ``["named"][predictor]``: the case's named groups (clinical strata,
    communities), across them per target when there are at least 6, else across targets per group
    (``settings["named_across"]``); ``timings``: seconds of each predictor and of the refits; ``settings``:
    sizes, group counts, the named groups' labels and sizes; ``tensors["lengths"]``: each group's size.
    """
    families = {"random": random_groups(case.n_units, sizes, per_size, seed)}
    if case.order is not None:
        families["local"] = local_groups(case.order, sizes, per_size)
    named = list(case.named.values())
    every = [group for groups in families.values() for group in groups] + named
    actual, loo_seconds = _timed(leave_one_out, case.task, case.params, case.target, groups=every,
                                 cache_dir=cache_dir, cache_key=case.key, progress=progress)
    predicted, seconds = predict(case, every)
    seconds["exact refits"] = loo_seconds
    valid = None if case.valid is None else case.valid(every)
    columns = case.forward_columns(actual.shape[1])
    lengths = np.array([len(group) for group in every])
    used_sizes = [size for size in sizes if size <= case.n_units // 2]
    scores: dict[str, Any] = {}
    offset = 0
    for family, groups in families.items():
        rows = np.arange(offset, offset + len(groups))
        offset += len(groups)
        scores[family] = {str(size): _scores(predicted, actual, valid, rows[lengths[rows] == size], columns=columns)
                          for size in used_sizes}
    rows = np.arange(offset, len(every))
    # few named groups (graph communities): correlate across targets, one correlation per group
    named_across = "units" if len(rows) >= 6 else "targets"
    scores["named"] = _scores(predicted, actual, valid, rows, named_across, columns) if len(rows) else {}
    return Comparison(
        settings={"sizes": used_sizes, "n_groups": len(every), "per_size": per_size, "n_units": case.n_units,
                  "named_labels": list(case.named), "named_sizes": [len(group) for group in named],
                  "named_across": named_across},
        estimates=predicted, truth={"refits": actual}, correlations=scores, timings=seconds, setup=case,
        tensors={"lengths": lengths})


def single_scores(case: Case) -> dict[str, torch.Tensor]:
    """Single-unit scores ``(n_units, n_targets)`` of the additive predictors (VIF and IF)."""
    common = dict(hessian=case.hessian)
    return {"summed VIF": influence(case.task, case.params, case.target, **common),
            "group IF": influence(case.task, case.params, case.target, method="if", **common)}


def lds_scores(case: Case, alpha: float, n_subsets: int, *, seed: int, cache_dir: Any = None, n_jobs: int = 1,
               progress: bool = False, singles: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """LDS of every predictor on ``n_subsets`` random subsets keeping ``alpha`` of the units (plain targets).

    Summed VIF and group IF are linear datamodels of single-unit scores; group VIF, the second-order step and
    Forward-INF (``forward_targets`` spread targets) score each complement as one group.
    ``singles``: :func:`single_scores` of the case, if already computed. Also returns the least-squares scale
    ``c`` minimising ``||c predicted - actual||`` (how much each predictor undershoots the refits).
    """
    subsets = sample_subsets(case.n_units, n_subsets, alpha, seed)
    actual = subset_changes(case.task, case.params, case.target, subsets, cache_dir=cache_dir, n_jobs=n_jobs,
                            cache_key=case.key, progress=progress)
    singles = single_scores(case) if singles is None else singles
    complements = subsets.removed
    predicted = {name: linear_datamodel(values, subsets) for name, values in singles.items()}
    predicted["group VIF"] = influence(case.task, case.params, case.target, groups=complements, hessian=case.hessian)
    predicted["2nd order"] = second_order_influence(case.task, case.params, case.target, groups=complements,
                                                    hessian=case.hessian)
    # Forward-INF of each whole complement (its mask difference), on spread targets only
    predicted["Forward-INF"] = forward_influence(case.task, case.params, case.selected_targets(), groups=complements)
    columns = case.forward_columns(actual.shape[1])
    scores, scale = {}, {}
    for name in PREDICTORS:
        values = predicted[name]
        truth = actual if values.shape[1] == actual.shape[1] else actual[:, columns]
        scores[name] = lds(values, truth)
        scale[name] = float((values * truth).sum() / (values * values).sum())
    return {"alpha": alpha, "n_subsets": n_subsets, "lds": scores, "least_squares_scale": scale}


def sizes(quick: bool) -> dict[str, tuple[tuple[int, ...], int]]:
    """Group sizes and groups per size (per family) of every case."""
    if quick:
        return {"cox-support": ((1, 2, 5, 20, 50), 3), "embedding-karate": ((1, 2, 5), 3),
                "ranking-softmax": ((1, 2, 5), 3)}
    return {"cox-support": ((1, 2, 5, 10, 20, 50, 100, 200, 500), 20), "embedding-karate": ((1, 2, 5, 10), 10),
            "embedding-sbm": ((1, 2, 5, 10), 8), "ranking-softmax": ((1, 2, 5, 10, 20), 8)}


def make_case(name: str, *, quick: bool, seed: int) -> Case:
    """The case called ``name`` (a key of :func:`sizes`)."""
    if name == "cox-support":
        case = cox_case(quick=quick, seed=seed)
    elif name.startswith("embedding-"):
        case = embedding_case(name.removeprefix("embedding-"), quick=quick, seed=seed)
    else:
        case = ranking_case(quick=quick, seed=seed)
    case.forward_targets = FORWARD_TARGETS[quick]
    return case


def run(*, quick: bool, seed: int = 0, cache_dir: Any = None, n_jobs: int = 1, progress: bool = False,
        cases: tuple[str, ...] | None = None) -> Comparison:
    """Every case's group-size curves (one part each, :func:`group_curves`) and the Cox LDS (alpha 0.5 and 0.8).

    ``details["lds"][alpha]``: :func:`lds_scores` of the Cox case; each part's ``timings["total"]``: its case's
    set-up, refits and estimates.
    """
    plan = sizes(quick)
    parts, lds_results = {}, {}
    for name in cases or tuple(plan):
        start = time.perf_counter()
        case = make_case(name, quick=quick, seed=seed)
        group_sizes, per_size = plan[name]
        parts[name] = group_curves(case, group_sizes, per_size, seed=seed, cache_dir=cache_dir, progress=progress)
        if name == "cox-support":
            singles = single_scores(case)
            for alpha in (0.5, 0.8):
                lds_results[f"{alpha:g}"] = lds_scores(case, alpha, 20 if quick else 100, seed=seed,
                                                       cache_dir=cache_dir, n_jobs=n_jobs, progress=progress,
                                                       singles=singles)
        parts[name].timings["total"] = time.perf_counter() - start
    return Comparison(settings={"quick": quick, "seed": seed}, parts=parts, details={"lds": lds_results})


def table(results: Comparison) -> pd.DataFrame:
    """Long table of the curves: one row per (case, family, size, predictor) with Pearson and relative error."""
    rows = [{"case": case, "family": family, "size": int(size), "predictor": predictor, **scores}
            for case, curve in results.parts.items() for family in ("random", "local") if family in curve.correlations
            for size, by_predictor in curve.correlations[family].items() for predictor, scores in by_predictor.items()]
    return pd.DataFrame(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``python -m vif reproduce groups``."""
    parser.add_argument("--cache-dir", default=None, help="folder for the exact refits (resumable)")
    parser.add_argument("--n-jobs", type=int, default=1, help="joblib workers for the refits")


def reproduce(*, quick: bool, seed: int, cache_dir: str | None = None, n_jobs: int = 1) -> Comparison:
    """Group-size curves of every predictor on every task, and LDS on Cox (:func:`run`)."""
    with torch_threads(1):
        return run(quick=quick, seed=seed, cache_dir=cache_dir, n_jobs=n_jobs)
