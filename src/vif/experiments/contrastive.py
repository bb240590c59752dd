"""Contrastive (InfoNCE) experiment: VIF, IF, a naive per-anchor influence and the IF's roles against LOO.

Units are the training images of :func:`vif.datasets.digits.contrastive_digits`; the model is
:class:`vif.tasks.contrastive.Contrastive`. Targets (columns): the InfoNCE loss of every held-out anchor
(mask-aware: a removed training sample leaves the held-out denominators) then the cosine similarity of
seeded pairs of clean held-out images (rotation invariant). Estimates for every training sample:

* ``vif``: :func:`vif.influence` with the task (pseudo-inverse Hessian: the rotations are its null space);
* ``if``: the infinitesimal IF; ``anchor`` / ``positive`` / ``negative``: the IF of each role
  (:meth:`~vif.tasks.contrastive.Contrastive.role_objective`), which sum to ``if``;
* ``naive``: VIF of the anchor-only objective, what a library that sees one loss term per sample computes
  (equal to the anchor role, since the objective is linear in the anchor weights);
* ``vif-gn``: damped VIF with the Gauss-Newton Hessian over the logits, the linearised PBRF.

Ground truths: warm-started LOO for every sample, cold-started LOO (the seeded start of ``theta_hat``) for a
seeded subset, and the PBRF (Bae et al. 2022) with damping ``lambda`` over the logits ``S``::

    theta_p = argmin  L_{-i}(S(theta)) - <grad_S L(S_s), S(theta)> + ((wd + lambda) / 2) ||theta - theta_s||^2.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field

import torch

from ..datasets.digits import ContrastiveDigits, contrastive_digits
from ..fit import saddle_free_newton
from ..influence import influence
from ..loo import leave_one_out
from ..metrics import correlations
from ..pbrf import proximal_objective
from ..solvers import PseudoInverse
from ..tasks import contrastive
from ..threads import torch_threads
from ._results import Comparison

__all__ = ["Settings", "Setup", "ProximalResponse", "settings", "setup", "estimates", "ground_truth",
           "run", "sweep", "speed", "add_arguments", "reproduce"]

# the rotations' eigenvalues at a fit with max|grad| ~ 1e-9 are about +-1e-10 of the largest: drop them
PINV = PseudoInverse(rcond=1e-8)


@dataclass(frozen=True)
class Settings:
    """Everything that defines one experiment (and its cache key)."""

    n_train: int = 150
    n_test: int = 100
    n_pairs: int = 100
    n_components: int = 16
    dim: int = 8
    encoder: str = "linear"
    hidden: int = 16
    tau: float = 0.5
    weight_decay: float = 0.01
    seed: int = 0
    gtol: float = 1e-9
    n_cold: int = 10
    n_sweep: int = 40  # seeded training samples refitted at each sweep point
    damping: float = 0.1

    def key(self) -> str:
        """A stable string naming the settings, for cache keys."""
        return json.dumps(asdict(self), sort_keys=True)


def settings(*, quick: bool, seed: int = 0, **overrides) -> Settings:
    """The book's settings: 150 training images (50 at QUICK), 100 held-out anchors and cosine pairs (20)."""
    values = dict(seed=seed, n_train=50, n_test=20, n_pairs=20, n_cold=3, n_sweep=15) if quick else dict(seed=seed)
    values.update(overrides)
    return Settings(**values)


@dataclass
class Setup:
    """The fitted task with its targets: ``target(params, mask)`` gives held-out losses then cosines."""

    settings: Settings
    data: ContrastiveDigits
    task: contrastive.Contrastive
    params: dict[str, torch.Tensor]
    fit_seconds: float
    _loss: object = field(repr=False, default=None)
    _cosine: object = field(repr=False, default=None)

    def target(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(n_test + n_pairs,): held-out InfoNCE losses (mask-aware), then cosine similarities."""
        return torch.cat([self._loss(params, mask), self._cosine(params)])

    @property
    def split(self) -> dict[str, slice]:
        """Column ranges of the two target families."""
        n = self.settings.n_test
        return {"heldout_loss": slice(0, n), "cosine": slice(n, n + self.settings.n_pairs)}


def make_task(config: Settings, data: ContrastiveDigits) -> contrastive.Contrastive:
    """The contrastive task of ``config`` on the training views of ``data``."""
    module = contrastive.encoder(config.encoder, config.n_components, config.dim, hidden=config.hidden)
    return contrastive.Contrastive(data.train_views, module, tau=config.tau, weight_decay=config.weight_decay,
                                   seed=config.seed, gtol=config.gtol)


def setup(config: Settings) -> Setup:
    """Load the data, fit ``theta_hat`` from the seeded cold start and build the targets."""
    data = contrastive_digits(n_train=config.n_train, n_test=config.n_test, n_components=config.n_components,
                              seed=config.seed)
    task = make_task(config, data)
    start = time.perf_counter()
    params = task.fit()
    seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(config.seed + 1)
    left = torch.randint(config.n_test, (config.n_pairs,), generator=generator, device="cpu")
    right = (left + 1 + torch.randint(config.n_test - 1, (config.n_pairs,), generator=generator, device="cpu")) % config.n_test
    return Setup(config, data, task, params, seconds, task.heldout_loss(data.test_views),
                 task.cosine_similarity(data.test_clean[left], data.test_clean[right]))


@dataclass
class ProximalResponse(contrastive.Contrastive):
    """The PBRF of the module docstring as a task; its warm refits start at ``params_s`` (``theta_hat``)."""

    params_s: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    damping: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        ones = self.views.new_ones(self.n_units)
        self._proximal = proximal_objective(self.logits, self.data_loss, self.params_s,
                                            self.weight_decay + self.damping, (ones, ones, ones))

    def loss(self, params: dict[str, torch.Tensor], anchor: torch.Tensor, positive: torch.Tensor,
             negative: torch.Tensor) -> torch.Tensor:
        """PBRF objective at the role masks (:func:`vif.pbrf.proximal_objective`; equal masks in :meth:`objective`)."""
        return self._proximal(params, anchor, positive, negative)


def proximal(problem: Setup, damping: float) -> ProximalResponse:
    """The PBRF task of ``problem`` at ``damping``."""
    task = problem.task
    return ProximalResponse(task.views, task.module, tau=task.tau, weight_decay=task.weight_decay, seed=task.seed,
                            gtol=task.gtol, params_s=problem.params, damping=damping)


def estimates(problem: Setup) -> dict[str, torch.Tensor]:
    """Every estimate of the module docstring, each (n_train, n_targets), with their wall-clock seconds."""
    task, params, n = problem.task, problem.params, problem.task.n_units
    out, seconds = {}, {}
    for name, objective, method in (("vif", task, "vif"), ("if", task, "if"),
                                    ("naive", task.role_objective("anchor"), "vif")):
        start = time.perf_counter()
        out[name] = influence(objective, params, problem.target, n_units=n, method=method, hessian=PINV)
        seconds[name] = time.perf_counter() - start
    for role in contrastive.ROLES[1:]:
        out[role] = influence(task.role_objective(role), params, problem.target, n_units=n, method="if",
                              hessian=PINV)
    out["anchor"] = influence(task.role_objective("anchor"), params, problem.target, n_units=n, method="if",
                              hessian=PINV)
    out["vif-gn"] = influence(proximal(problem, 0.0), params, problem.target, hessian="exact",
                              damping=problem.settings.damping)
    return {"estimates": out, "seconds": seconds}


def ground_truth(problem: Setup, kind: str, *, units=None, cache_dir=None) -> torch.Tensor:
    """Actual target changes, (n_removals, n_targets): ``"warm"``, ``"cold"`` or ``"pbrf"`` (all units by default)."""
    task = proximal(problem, problem.settings.damping) if kind == "pbrf" else problem.task
    return leave_one_out(task, problem.params, problem.target, units=units, warm_start=kind != "cold",
                         cache_dir=cache_dir, cache_key=f"contrastive|{problem.settings.key()}|{kind}", progress=False)


def cold_units(problem: Setup, count: int | None = None) -> torch.Tensor:
    """A seeded subset of ``count`` training samples (default ``n_cold``: those refitted from the cold start)."""
    generator = torch.Generator().manual_seed(problem.settings.seed + 2)
    count = min(problem.settings.n_cold if count is None else count, problem.task.n_units)
    return torch.randperm(problem.task.n_units, generator=generator, device="cpu")[:count].sort().values


def compare(problem: Setup, predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """Mean Pearson (across removed samples, per target) for each target family."""
    return {family: correlations(predicted[:, columns], actual[:, columns]).pearson
            for family, columns in problem.split.items()}


def run(config: Settings, *, cache_dir=None, problem: Setup | None = None) -> Comparison:
    """Every estimate against warm, cold and PBRF refits on one configuration.

    ``estimates``: those of :func:`estimates`; ``truth``: ``"warm"`` and ``"pbrf"`` (every sample), ``"cold"``
    (the samples ``tensors["cold_units"]``). ``correlations[estimate][truth]``: :func:`compare` (mean Pearson per
    target family), and ``correlations["pbrf"]["warm"]``. ``details``: mean ``|IF|`` of each role, the relative
    VIF-IF gap and the largest cold-warm difference. ``problem`` reuses a :func:`setup` of the same ``config``.
    """
    problem = setup(config) if problem is None else problem
    found = estimates(problem)
    seconds = {"fit": problem.fit_seconds, **found["seconds"]}
    found = found["estimates"]
    start = time.perf_counter()
    warm = ground_truth(problem, "warm", cache_dir=cache_dir)
    seconds["loo_warm"] = time.perf_counter() - start
    cold_subset = cold_units(problem)
    truth = {"warm": warm, "cold": ground_truth(problem, "cold", units=cold_subset, cache_dir=cache_dir),
             "pbrf": ground_truth(problem, "pbrf", cache_dir=cache_dir)}
    table = {name: {"warm": compare(problem, found[name], warm),
                    "cold": compare(problem, found[name][cold_subset], truth["cold"]),
                    "pbrf": compare(problem, found[name], truth["pbrf"])} for name in found}
    table["pbrf"] = {"warm": compare(problem, truth["pbrf"], warm)}
    gap = (found["vif"] - found["if"]).abs().mean() / found["vif"].abs().mean()
    return Comparison(
        settings={**asdict(config), "n_params": sum(v.numel() for v in problem.params.values())},
        estimates=found, truth=truth, correlations=table, timings=seconds,
        details={"role_mean_abs": {role: float(found[role].abs().mean()) for role in contrastive.ROLES},
                 "vif_if_relative_gap": float(gap),
                 "cold_minus_warm_max": float((truth["cold"] - warm[cold_subset]).abs().max())},
        setup=problem, tensors={"cold_units": cold_subset})


def sweep(base: Settings, *, taus=(), weight_decays=(), dims=(), sizes=(), cache_dir=None) -> list[dict]:
    """Warm-LOO Pearson of VIF, IF and the naive estimate along ``tau``, ``wd``, ``dim`` and ``n_train`` (``sizes``).

    At each point the warm LOO refits a seeded subset of ``base.n_sweep`` training samples.
    """
    rows = []
    for name, values in (("tau", taus), ("weight_decay", weight_decays), ("dim", dims), ("n_train", sizes)):
        for value in values:
            config = Settings(**{**asdict(base), name: value, "n_cold": 0})
            problem = setup(config)
            units = cold_units(problem, base.n_sweep)
            found = {key: value[units] for key, value in estimates(problem)["estimates"].items()}
            warm = ground_truth(problem, "warm", units=units, cache_dir=cache_dir)
            row = {"parameter": name, "tau": config.tau, "weight_decay": config.weight_decay, "dim": config.dim,
                   "n_train": config.n_train,
                   "vif_if_relative_gap": float((found["vif"] - found["if"]).abs().mean() / found["vif"].abs().mean())}
            for method in ("vif", "if", "naive"):
                for family, value_r in compare(problem, found[method], warm).items():
                    row[f"{method}/{family}"] = value_r
            rows.append(row)
    return rows


ESTIMATE_REPEATS = 3  # calls per estimate in speed(); the fastest is reported


def speed(config: Settings, *, n_timed: int = 10, problem: Setup | None = None) -> dict:
    """Seconds of VIF and IF over all training samples and of warm LOO (``n_timed`` refits, times ``n``).

    Each estimate's seconds are the best of :data:`ESTIMATE_REPEATS` calls, each on a fresh task (the usual
    timing convention for a call this short); the refits are averaged over ``n_timed`` units.

    The timed task is fresh, so the warm refits pay for their one Hessian factorisation, as VIF does.
    ``loo_warm`` uses the task's fit (chord Newton steps with one cached Hessian); ``loo_generic`` the generic
    :func:`vif.fit.saddle_free_newton` (L-BFGS, then Newton steps with a new Hessian each) from ``theta_hat``.
    ``problem`` reuses a :func:`setup` of the same ``config``.
    """
    problem = setup(config) if problem is None else problem
    seconds = {}
    for method in ("vif", "if"):
        runs = []
        for _ in range(ESTIMATE_REPEATS):  # best of a few: one 0.3 s call varies up to 2x within a long kernel
            fresh = make_task(config, problem.data)
            start = time.perf_counter()
            influence(fresh, problem.params, problem.target, method=method, hessian=PINV)
            runs.append(time.perf_counter() - start)
        seconds[method] = min(runs)
    task = make_task(config, problem.data)
    timed = min(n_timed, task.n_units)
    for name, refit in (("loo_warm", task.fit), ("loo_generic", lambda mask, init: saddle_free_newton(
            task.objective, init, mask, gtol=task.gtol, max_iter=task.max_iter))):
        start = time.perf_counter()
        for unit in range(timed):
            mask = task.views.new_ones(task.n_units)
            mask[unit] = 0.0
            refit(mask, problem.params)
        seconds[name] = (time.perf_counter() - start) / timed * task.n_units
    return {**seconds, "n_units": task.n_units, "loo_timed_refits": timed,
            "loo_warm/vif": seconds["loo_warm"] / seconds["vif"], "loo_warm/if": seconds["loo_warm"] / seconds["if"],
            "loo_generic/vif": seconds["loo_generic"] / seconds["vif"]}


def sweep_values(quick: bool) -> dict[str, tuple[float, ...]]:
    """The book's sweeps: temperatures, weight decays, embedding dimensions and training-set sizes around the base."""
    if quick:
        return {"taus": (0.1,), "weight_decays": (0.1,), "dims": (), "sizes": (25,)}
    return {"taus": (0.05, 0.1, 0.2, 1.0, 2.0), "weight_decays": (1e-4, 1e-3, 0.1), "dims": (2, 4), "sizes": (25, 50)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m vif reproduce contrastive``."""
    parser.add_argument("--encoder", choices=contrastive.ENCODERS, default="linear", help="encoder (default linear)")
    parser.add_argument("--cache-dir", default=None, help="folder for the LOO refits (resumes from it)")


def reproduce(*, quick: bool, seed: int, encoder: str = "linear", cache_dir=None) -> Comparison:
    """:func:`run`, with its sweeps (``details["sweep"]``) and timings (``details["speed"]``)."""
    with torch_threads(1):  # small models: threads only add contention
        config = settings(quick=quick, seed=seed, encoder=encoder)
        result = run(config, cache_dir=cache_dir)
        result.details["sweep"] = sweep(config, cache_dir=cache_dir, **sweep_values(quick))
        result.details["speed"] = speed(config, n_timed=3 if quick else 10, problem=result.setup)
    return result
