"""Node-embedding experiment: VIF and IF for a skip-gram loss against three ground truths.

Units are nodes; targets are the pair losses ``-log p(k | j)`` of node pairs (scored with the removed
node left out of the softmax) and the link scores ``U[j] . U[k]``. Ground truths for every node:

* ``"warm"``: leave-one-out refit started from ``theta_hat`` and run to convergence;
* ``"cold"``: leave-one-out refit from the same seeded U(0, 1) start as ``theta_hat`` (the paper's protocol);
* ``"pbrf"``: the proximal Bregman response (Bae et al. 2022) with damping ``lambda``::

      theta_p = argmin_theta  D_Lambda(S(theta), S_s) + (l2 / (2 n)) ||theta - theta_s||^2
                              - [L(theta, 1) - L(theta, 1_{-i})] + (lambda / 2) ||theta - theta_s||^2

  where ``S = U V^T`` are the logits (the network outputs), ``Lambda(S)`` the full-data cross-entropy,
  ``D_Lambda`` its Bregman divergence and ``L(theta, m) = Lambda_m(S) + (l2/(2n))||theta||^2``. The L2
  term cancels in the removal difference, so up to a constant the objective is
  ``Lambda_{-i}(S) - <grad Lambda(S_s), S> + ((l2 / n + lambda) / 2) ||theta - theta_s||^2``
  (:func:`pbrf_objective`). Linearised at ``theta_s`` it is damped VIF with the Gauss-Newton Hessian.

:func:`reproduce` is the CLI entry point (``python -m vif reproduce node-embedding``); the chapter uses the
same building blocks.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch

from ..datasets.graphs import GRAPHS, load_graph
from ..errors import InputError
from ..fit import NEWTON_LIMIT, saddle_free_newton
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import correlations
from ..params import flatten
from ..pbrf import proximal_objective
from ..tasks import embedding
from ..threads import torch_threads
from ._results import Comparison
from ._setups import EmbeddingSettings as Settings
from ._setups import EmbeddingSetup as Setup
from ._setups import embedding_settings as settings
from ._setups import embedding_setup as setup

__all__ = ["Settings", "Setup", "ProximalResponse", "pbrf_objective", "setup", "estimate",
           "ground_truth", "compare", "readable", "run", "speed", "add_arguments", "reproduce"]

GROUND_TRUTHS = ("warm", "cold", "pbrf")


def pbrf_objective(loss: embedding.SkipGram, params_s: dict[str, torch.Tensor], damping: float):
    """Proximal Bregman response objective ``objective(params, mask, counts=None)`` (see the module docstring).

    :func:`vif.pbrf.proximal_objective` on the logits ``S = U V^T`` with the skip-gram cross-entropy as the
    output loss (``counts``, optional, are the walk counts of ``mask``, as in ``SkipGram.data_loss``) and
    proximity weight ``l2 / n + damping``. At ``mask = 1`` its minimiser is ``params_s``; its Hessian there is
    the Gauss-Newton Hessian ``J^T (d^2 Lambda / dS^2) J + (l2 / n + damping) I``.
    """
    theta_s, _ = flatten(params_s)
    ones = torch.ones(loss.n_units, dtype=theta_s.dtype, device=theta_s.device)
    return proximal_objective(embedding.logits, loss.data_loss, params_s, loss.penalty_weight + damping, (ones,))


class ProximalResponse:
    """The PBRF as a task (:class:`vif.task.Task`).

    ``fit(mask, init)`` minimises the PBRF objective at ``mask``, always from ``params_s`` (``init`` is
    ignored), with the skip-gram fit's optimiser.
    """

    def __init__(self, loss: embedding.SkipGram, params_s: dict[str, torch.Tensor], damping: float) -> None:
        self.loss, self.params_s, self.damping = loss, params_s, damping
        self._objective = pbrf_objective(loss, params_s, damping)
        self.n_units, self.gtol = loss.n_units, loss.gtol

    def objective(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The PBRF objective at ``mask``."""
        return self._objective(params, mask)

    def fit(self, mask: torch.Tensor | None = None, init: dict[str, torch.Tensor] | None = None
            ) -> dict[str, torch.Tensor]:
        """Minimise the PBRF objective at ``mask`` from ``params_s``."""
        mask = torch.ones_like(self.loss.adj[0]) if mask is None else mask
        counts = self.loss.counts(mask)
        return saddle_free_newton(lambda params, m: self._objective(params, m, counts), self.params_s, mask,
                                  gtol=self.gtol)


def estimate(problem: Setup, *, method: str = "vif", damping: float = 0.0, gauss_newton: bool = False,
             hessian: str = "pinv") -> torch.Tensor:
    """VIF or IF of every node on every target, (n_units, n_targets).

    ``hessian="pinv"`` drops the Hessian's null space (joint rotations of U and V, which no target sees);
    ``gauss_newton=True`` uses the Gauss-Newton Hessian (the PBRF objective's), i.e. the PBRF linearised.
    """
    objective = pbrf_objective(problem.loss, problem.params, 0.0) if gauss_newton else problem.loss
    return influence(objective, problem.params, problem.target, n_units=problem.n_units, method=method,
                     hessian=hessian, damping=damping)


def ground_truth(problem: Setup, kind: str, *, damping: float = 0.0, cache_dir=None,
                 progress: bool = False) -> torch.Tensor:
    """Actual target changes for every node, (n_units, n_targets): ``"warm"``, ``"cold"`` or ``"pbrf"``."""
    if kind not in GROUND_TRUTHS:
        raise InputError(f"kind must be one of {GROUND_TRUTHS}, got {kind!r}.")
    task = ProximalResponse(problem.loss, problem.params, damping) if kind == "pbrf" else problem.loss
    key = f"{problem.settings.key()}|{kind}|{damping!r}"
    return leave_one_out(task, problem.params, problem.target, warm_start=kind != "cold",
                         cache_dir=cache_dir, cache_key=key, progress=progress)


def compare(problem: Setup, predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, dict[str, float]]:
    """Mean Pearson/Spearman per target (across nodes) and per node (across targets), per target family."""
    valid = problem.valid()
    result = {}
    for family, columns in problem.split.items():
        for across, name in (("units", "per_target"), ("targets", "per_node")):
            stats = correlations(predicted[:, columns], actual[:, columns], valid=valid[:, columns], across=across)
            result[f"{family}/{name}"] = {"pearson": stats.pearson, "spearman": stats.spearman, "n_used": stats.n_used}
    return result


def readable(key: str) -> str:
    """A :func:`compare` key for a table: ``"pair_loss/per_target/pearson"`` -> ``"pair loss, per target: Pearson"``."""
    parts = key.split("/")
    label = ", ".join(part.replace("_", " ") for part in parts[:2])
    return f"{label}: {parts[2].capitalize()}" if len(parts) > 2 else label


def run(config: Settings, *, cache_dir=None, progress: bool = False) -> Comparison:
    """All estimates and ground truths of one configuration, compared.

    ``estimates``: ``"{method} (damping {d})"`` for ``vif`` and ``if`` at damping 0 and each of
    ``config.dampings``, and ``vif-gnh`` (Gauss-Newton Hessian) at each positive damping; ``truth``: ``"warm"``,
    ``"cold"`` and ``"pbrf (damping {d})"``. ``correlations[estimate][truth]``: the flattened :func:`compare`
    (``"pair_loss/per_target/pearson"``, ...) against warm, cold and the PBRF of the same damping.
    ``details``: how many nodes' cold refits land elsewhere than the warm ones, and the largest difference.
    """
    problem = setup(config)
    estimates, truth, seconds = {}, {}, {"fit": problem.fit_seconds}
    for kind in ("warm", "cold"):
        start = time.perf_counter()
        truth[kind] = ground_truth(problem, kind, cache_dir=cache_dir, progress=progress)
        seconds[f"loo_{kind}"] = time.perf_counter() - start
    scores = {}
    for damping in (0.0, *config.dampings):
        for method in ("vif", "if"):
            start = time.perf_counter()
            estimates[f"{method} (damping {damping:g})"] = estimate(problem, method=method, damping=damping)
            seconds[f"{method}_{damping:g}"] = time.perf_counter() - start
        if damping > 0:
            estimates[f"vif-gnh (damping {damping:g})"] = estimate(problem, damping=damping, gauss_newton=True)
            truth[f"pbrf (damping {damping:g})"] = ground_truth(problem, "pbrf", damping=damping,
                                                                cache_dir=cache_dir, progress=progress)
        for name in [name for name in estimates if name.endswith(f"(damping {damping:g})")]:
            against = {"warm": truth["warm"], "cold": truth["cold"]}
            if damping > 0:
                against["pbrf"] = truth[f"pbrf (damping {damping:g})"]
            scores[name] = {kind: _flatten(compare(problem, estimates[name], actual)) for kind, actual in against.items()}
    changed = ((truth["cold"] - truth["warm"]).abs() * problem.valid()).amax(dim=1)
    return Comparison(
        settings={**asdict(config), "n_nodes": problem.n_units, "n_params": 2 * problem.n_units * config.dim,
                  "n_pairs": len(problem.pairs), "n_links": len(problem.links)},
        estimates=estimates, truth=truth, correlations=scores, timings=seconds,
        details={"cold_minimum_differs": int((changed > 1e-6).sum()), "cold_minus_warm_max": float(changed.max())},
        setup=problem)


def _flatten(nested: dict) -> dict:
    return {f"{outer}/{inner}": value for outer, values in nested.items() for inner, value in values.items()}


def speed(graph: str = "karate", *, n_nodes: int = 200, n_targets: int = 20, n_loo: int | None = None,
          seed: int = 0, gtol: float | None = None) -> dict:
    """Wall-clock seconds of VIF, IF and leave-one-out refits on one graph (link-score targets).

    Args:
        graph, n_nodes, seed: the graph (see :func:`vif.datasets.graphs.load_graph`).
        n_targets: link-score targets (a plain target: one linear solve per target).
        n_loo: refits timed, warm and cold, on the first ``n_loo`` nodes (default all); the full LOO time
            is ``n`` times their mean (projected when ``n_loo < n``).
        gtol: ``max |grad|`` of the fit and of each refit; default 1e-10 with the dense Newton polish,
            1e-8 above ``vif.fit.NEWTON_LIMIT`` parameters (L-BFGS alone).

    Returns:
        Dict with ``n_nodes``, ``n_params``, ``backend`` (``"pinv"``: dense Hessian and eigendecomposition,
        up to ``vif.fit.NEWTON_LIMIT`` parameters; else ``"cg"``, damping 0), seconds ``vif`` and
        ``if`` (all nodes), ``refit_warm`` / ``refit_cold`` (mean of one refit), ``loo_warm`` / ``loo_cold``
        (all nodes) and the ratios ``loo_cold/vif``, ``loo_warm/vif``, ``loo_cold/if``.
    """
    n = load_graph(graph, n_nodes=n_nodes, seed=seed).num_nodes
    dense = 2 * n * Settings.dim <= NEWTON_LIMIT
    backend = "pinv" if dense else "cg"
    gtol = (1e-10 if dense else 1e-8) if gtol is None else gtol
    config = settings(quick=True, graph=graph, n_nodes=n_nodes, seed=seed, n_pairs=1, n_links=n_targets,
                      gtol=gtol)
    problem = setup(config)
    seconds = {}
    for method in ("vif", "if"):
        start = time.perf_counter()
        influence(problem.loss, problem.params, problem.link_target, method=method, hessian=backend)
        seconds[method] = time.perf_counter() - start
    timed = range(n if n_loo is None else min(n_loo, n))
    for name, init in (("warm", problem.params), ("cold", None)):
        start = time.perf_counter()
        for unit in timed:
            mask = torch.ones(n, dtype=torch.float64, device="cpu")
            mask[unit] = 0.0
            problem.loss.fit(mask, init)
        seconds[f"refit_{name}"] = (time.perf_counter() - start) / len(timed)
        seconds[f"loo_{name}"] = seconds[f"refit_{name}"] * n
    return {"graph": problem.graph.name, "n_nodes": n, "n_params": 2 * n * config.dim, "backend": backend,
            "gtol": gtol, "fit": problem.fit_seconds, **seconds, "loo_timed_refits": len(timed),
            "loo_cold/vif": seconds["loo_cold"] / seconds["vif"], "loo_warm/vif": seconds["loo_warm"] / seconds["vif"],
            "loo_cold/if": seconds["loo_cold"] / seconds["if"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m vif reproduce node-embedding``."""
    parser.add_argument("--graph", choices=GRAPHS, default="karate", help="graph (default karate)")
    parser.add_argument("--dim", type=int, default=2, help="embedding dimension (default 2, as in the paper)")
    parser.add_argument("--cache-dir", default=None, help="folder for the LOO refits (resumes from it)")


def reproduce(*, quick: bool, seed: int, graph: str = "karate", dim: int = 2, cache_dir=None) -> Comparison:
    """Run the node-embedding experiment (:func:`run`); its timings on the graph in ``details["speed"]``."""
    with torch_threads(1):  # these problems are small: threads only add contention
        result = run(settings(quick=quick, graph=graph, dim=dim, seed=seed), cache_dir=cache_dir, progress=True)
        result.details["speed"] = speed(graph, seed=seed, n_loo=None if graph == "karate" else 3)
    return result
