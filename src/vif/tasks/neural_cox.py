"""A DeepSurv-style neural Cox model with a patient mask: an MLP risk score under the masked partial likelihood.

The units are **patients**. The network ``f_theta`` maps covariates to a log-hazard ``eta_i = f_theta(x_i)``;
the objective is the summed negative partial log-likelihood of :mod:`vif.tasks.cox` (Breslow or weighted
Efron ties) on those risk scores, plus weight decay ``weight_decay / 2 * ||theta||^2`` on every parameter::

    L(theta, m) = l(f_theta(X), m) + (weight_decay / 2) ||theta||^2

The mask enters only ``l``, so the VIF gradient difference is ``J^T [grad_eta l(eta, m) - grad_eta l(eta, 1)]``
(:mod:`vif.structured`, the task's ``mask_gradient_differences`` hook) and the Gauss-Newton Hessian is
``J^T (d^2 l / d eta^2) J + weight_decay I`` (:meth:`NeuralCox.gauss_newton`), positive definite because ``l``
is convex in ``eta``. Any ``torch.nn.Module`` mapping ``(n, p)`` covariates to ``(n, 1)`` or ``(n,)`` works:
it is evaluated through :func:`torch.func.functional_call` with parameters given as a dict of tensors. The
partial likelihood is unchanged by adding a constant to every ``eta``, so :func:`mlp` has no output bias.
Devices follow the parameters: move the data with ``device=`` and every computation stays there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call

from ..errors import InputError
from ..fit import lbfgs_newton
from ..hessian import MatVec, gauss_newton_hvp, hessian_matrix
from ..params import Params, check_mask, flatten
from ..pbrf import proximal_objective
from ..solvers import cholesky_solver
from ..structured import output_structure_hook
from .cox import TIES, CoxData, negative_log_partial_likelihood, prepare

__all__ = ["mlp", "NeuralCox", "pbrf_objective"]



def mlp(n_inputs: int, hidden: Sequence[int], *, seed: int = 0, activation: str = "tanh") -> torch.nn.Module:
    """A seeded MLP ``(n, n_inputs) -> (n, 1)``: hidden layers of widths ``hidden``, no output bias, float64.

    ``activation`` is ``"tanh"`` (smooth, so Newton and the Hessian are well defined) or ``"selu"`` (DeepSurv's).
    """
    if activation not in ("tanh", "selu"):
        raise InputError(f"activation must be 'tanh' or 'selu', got {activation!r}.")
    if not hidden or any(int(width) < 1 for width in hidden):
        raise InputError(f"hidden must be a non-empty sequence of positive widths, got {tuple(hidden)!r}.")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [torch.nn.Linear(width, int(size), dtype=torch.float64),
                   torch.nn.Tanh() if activation == "tanh" else torch.nn.SELU()]
        width = int(size)
    layers.append(torch.nn.Linear(width, 1, bias=False, dtype=torch.float64))
    torch.random.set_rng_state(generator_state)
    return torch.nn.Sequential(*layers)


class NeuralCox:
    """The task contract (:class:`vif.task.Task`) of the neural Cox model; patients are the units.

    Args:
        X: covariates ``(n, p)``; time ``(n,)`` positive; event ``(n,)`` 0/1 (see :func:`vif.tasks.cox.prepare`).
        module: the risk network (default ``mlp(p, hidden, seed=seed)``); its parameters give the seeded cold start.
        hidden: hidden widths of the default MLP.
        weight_decay: ``>= 0``, adds ``weight_decay / 2 * ||theta||^2`` to the **summed** partial likelihood.
        ties: ``"breslow"`` or ``"efron"``.
        seed: seeds the default network's initialisation (the cold start of every fit with ``init=None``).
        gtol: ``max|grad|`` every fit must reach.
        device: where the data and parameters live (default: the device of ``X`` if a tensor, else CPU).
    """

    def __init__(self, X: Any, time: Any, event: Any, *, module: torch.nn.Module | None = None,
                 hidden: Sequence[int] = (32, 32), weight_decay: float = 1.0, ties: str = "efron", seed: int = 0,
                 gtol: float = 1e-7, device: torch.device | str | None = None) -> None:
        if ties not in TIES:
            raise InputError(f"ties must be one of {TIES}, got {ties!r}.")
        if not weight_decay >= 0:
            raise InputError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        data = prepare(X, time, event)
        device = torch.device(device) if device is not None else data.x.device
        self.data = CoxData(**{name: getattr(data, name).to(device) for name in ("x", "event", "order", "group", "start")},
                            n_groups=data.n_groups)
        self.module = (module or mlp(self.data.x.shape[1], hidden, seed=seed)).to(device=device, dtype=self.data.x.dtype)
        self.weight_decay, self.ties, self.gtol, self.seed = float(weight_decay), ties, gtol, seed
        self._preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.mask_gradient_differences = output_structure_hook(self.outputs, self.output_loss)

    @property
    def n_units(self) -> int:
        """Patients."""
        return self.data.n

    @property
    def n_params(self) -> int:
        """Number of scalar parameters."""
        return sum(value.numel() for value in self.module.parameters())

    def init_params(self) -> dict[str, torch.Tensor]:
        """The seeded cold start: the module's own parameters, detached copies (dict of float tensors)."""
        return {name: value.detach().clone() for name, value in self.module.named_parameters()}

    def risk(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Log-hazards ``f_theta(x)`` of covariates ``x`` ``(m, p)``, shape ``(m,)``."""
        return functional_call(self.module, dict(params), (x,)).reshape(-1)

    def outputs(self, params: Params) -> torch.Tensor:
        """Training risk scores ``eta`` in **time-sorted** order, shape ``(n,)``."""
        return self.risk(params, self.data.x)

    def output_loss(self, eta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked partial likelihood of sorted risk scores ``eta`` ``(n,)``; ``mask`` ``(n,)`` in input row order."""
        return negative_log_partial_likelihood(self.data, eta, mask[self.data.order], self.ties)

    def penalty(self, params: Params) -> torch.Tensor:
        """``weight_decay / 2 * ||theta||^2``."""
        return 0.5 * self.weight_decay * sum((value * value).sum() for value in dict(params).values())

    def objective(self, params: Params, mask: torch.Tensor) -> torch.Tensor:
        """``l(f_theta(X), mask) + weight_decay / 2 ||theta||^2`` (mask in input row order, ``(n,)``)."""
        check_mask(mask, self.n_units)
        return self.output_loss(self.outputs(params), mask) + self.penalty(params)

    def gauss_newton(self, params: Params, mask: torch.Tensor | None = None) -> MatVec:
        """Flat Gauss-Newton product ``V -> [J^T (d^2 l / d eta^2) J + weight_decay I] V`` at ``params`` (PSD).

        ``V`` is ``(n_params,)`` or ``(n_params, k)`` in :func:`vif.params.flatten` order; use it as
        ``vif.solvers.CG(operator=...)`` or ``vif.solvers.Exact(operator=...)``.
        """
        theta, unflatten = flatten(params)
        mask = self._ones() if mask is None else mask
        return gauss_newton_hvp(lambda vector: self.outputs(unflatten(vector)), lambda eta: self.output_loss(eta, mask),
                                theta, lambda vector: 0.5 * self.weight_decay * (vector * vector).sum())

    def precondition(self, params: Params, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Factorise the full-data Hessian at ``params`` (or ``matrix``) to warm-start refits; returns the matrix.

        Warm refits (``fit(mask, init)``) then start with L-BFGS preconditioned by this factorisation
        (:func:`vif.fit.lbfgs_newton`): the first step is the Newton step of the full-data Hessian.
        """
        theta, unflatten = flatten(params)
        if matrix is None:
            ones = self._ones()
            matrix = hessian_matrix(lambda vector: self.objective(unflatten(vector), ones), theta)
        self._preconditioner = cholesky_solver(matrix, 1e-10 * float(matrix.diagonal().abs().max()),
                                               max_condition=math.inf)  # a preconditioner
        return matrix

    def fit(self, mask: torch.Tensor | None = None, init: Params | None = None) -> dict[str, torch.Tensor]:
        """Minimise the objective at ``mask`` (default all ones) from ``init`` (default the seeded cold start).

        :func:`vif.fit.lbfgs_newton`: warm starts use the preconditioned L-BFGS of :meth:`precondition` when it
        was called; otherwise (and if that stalls) L-BFGS, then Newton steps with the dense Hessian up to
        :data:`vif.fit.DENSE_LIMIT` parameters. Raises :class:`vif.errors.ConvergenceError` when ``max|grad| >
        gtol`` at the end.
        """
        mask = self._ones() if mask is None else mask.to(dtype=self.data.x.dtype, device=self.data.x.device)
        start = self.init_params() if init is None else {name: value.detach().clone() for name, value in dict(init).items()}
        return lbfgs_newton(self.objective, start, mask, gtol=self.gtol,
                            preconditioner=self._preconditioner if init is not None else None)

    def _ones(self) -> torch.Tensor:
        return torch.ones(self.n_units, dtype=self.data.x.dtype, device=self.data.x.device)


def pbrf_objective(task: NeuralCox, params_s: Params, damping: float = 0.0) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """The proximal Bregman response objective (Bae et al. 2022) of the neural Cox model, ``objective(params, mask)``.

    ``l(f_theta, m) - <grad_eta l(eta_s, 1), f_theta> + ((weight_decay + damping) / 2) ||theta - theta_s||^2``: the
    Bregman divergence of the full-data loss in output space, minus the removed patients' share of the loss,
    plus the proximity term (weight decay is quadratic, so its Bregman divergence is itself). At ``mask = 1``
    the minimiser is ``theta_s``; the Hessian there is the Gauss-Newton Hessian plus ``damping I``, so VIF
    with :meth:`NeuralCox.gauss_newton` is its first-order estimate. The objective is
    :func:`vif.pbrf.proximal_objective` on the risk scores (:meth:`NeuralCox.outputs`, :meth:`NeuralCox.output_loss`).
    """
    return proximal_objective(task.outputs, task.output_loss, params_s, task.weight_decay + float(damping),
                              (task._ones(),))
