"""Contrastive learning with InfoNCE over two fixed views of every sample, with a sample mask (units: samples).

Model. An encoder ``f_theta`` (any ``torch.nn.Module``, evaluated through :func:`torch.func.functional_call`
with ``params`` a dict of float64 tensors; flat order = dict order) maps view ``a_i`` and view ``b_i`` of
sample ``i`` to embeddings; the logits are ``S[i, j] = f(a_i) . f(b_j) / tau`` (n, n). The symmetric InfoNCE
objective (CPC/CLIP form: the candidates of an anchor are the other view of every kept sample) with a
mask ``m`` is

    L(theta, m) = (1 / (2 N)) sum_i m_i [ l_i(S) + l_i(S^T) ] + (weight_decay / 2) ||theta||^2,
    l_i(S) = logsumexp_j (S[i, j] + log m_j) - S[i, i],

with ``N`` (``scale``) the number of samples of the full data, a constant. A sample enters in three roles,
each with its own mask in :meth:`Contrastive.loss`: as an **anchor** (the weight ``m_i`` of its two rows,
numerators included), as a **positive** (``log m_i`` on the diagonal entry of its own rows' denominators)
and as a **negative** (``log m_i`` in column ``i`` of every other anchor's denominator). Deleting a sample
sets all three to 0; ``log 0`` is replaced by ``log(tiny)`` so that ``exp`` underflows to 0 exactly while
gradients stay finite. The objective does not decompose over samples: removing ``i`` changes the
denominator of every other anchor.

Symmetry. ``S`` is unchanged when the encoder's last linear map is multiplied by an orthogonal ``R``
(``f -> R f``); weight decay is too, so the Hessian at a minimum has ``k (k - 1) / 2`` zero eigenvalues
(``k`` the embedding dimension). The loss, the held-out losses and cosine similarities see only
``S``-like inner products, so their gradients are orthogonal to that null space: a pseudo-inverse (or any
damping) gives the same influence along it. :meth:`Contrastive.fit` uses the pseudo-inverse Newton polish of
:func:`vif.fit.saddle_free_newton` and :func:`vif.fit.chord_newton` for the same reason.

Temperature. With dot-product logits and a linear encoder ``f(x) = W x``, substituting ``W = sqrt(tau) V``
shows that the minimiser's logits depend on ``tau`` and ``weight_decay`` only through their product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ..errors import ConvergenceError, InputError
from ..fit import chord_newton, saddle_free_inverse, saddle_free_newton
from ..params import check_mask, flatten

__all__ = ["Contrastive", "ROLES", "encoder", "log_mask", "init_params"]

_DTYPE = torch.float64
ROLES = ("anchor", "positive", "negative")
ENCODERS = ("linear", "mlp")


def log_mask(mask: torch.Tensor) -> torch.Tensor:
    """``log m`` with ``log 0`` replaced by ``log(tiny)`` (about -708 in float64), as in :mod:`vif.tasks.embedding`."""
    return torch.log(mask.clamp_min(torch.finfo(mask.dtype).tiny))


def encoder(kind: str, n_features: int, dim: int, *, hidden: int = 16) -> nn.Module:
    """A float64 encoder: ``"linear"`` (``x -> W x``, no bias) or ``"mlp"`` (``x -> W2 tanh(W1 x + b1)``).

    The last map has no bias, so an orthogonal ``R`` applied to it is the only continuous symmetry of the
    logits (besides none for the linear encoder's input side).
    """
    if kind == "linear":
        module = nn.Linear(n_features, dim, bias=False)
    elif kind == "mlp":
        module = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, dim, bias=False))
    else:
        raise InputError(f"encoder must be one of {ENCODERS}, got {kind!r}.")
    return module.to(_DTYPE)


def init_params(module: nn.Module, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded cold start: weights ``N(0, 1 / fan_in)``, biases ``N(0, 0.01)``, in the module's parameter order."""
    generator = torch.Generator().manual_seed(seed)
    params = {}
    for name, value in module.named_parameters():
        std = value.shape[1] ** -0.5 if value.ndim == 2 else 0.1
        params[name] = std * torch.randn(value.shape, generator=generator, dtype=_DTYPE, device="cpu")
    return params


def _infonce_rows(logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-anchor InfoNCE ``logsumexp_j(S[i, j] + log mask_ij) - S[i, i]``, (n_anchors,).

    The positive mask sits on the diagonal (an anchor's own positive), the negative mask elsewhere.
    """
    n = logits.shape[0]
    diagonal = torch.eye(n, logits.shape[1], dtype=torch.bool, device=logits.device)
    masks = torch.where(diagonal, log_mask(positive)[None, :], log_mask(negative)[None, :])
    return torch.logsumexp(logits + masks, dim=1) - logits.diagonal()


@dataclass
class Contrastive:
    """Symmetric InfoNCE task over two views (see the module docstring); satisfies :class:`vif.task.Task`.

    Attributes:
        views: (2, n, n_features) the two fixed views of every training sample.
        module: the encoder (its own parameters are ignored; ``params`` are passed explicitly).
        tau: temperature (> 0).
        weight_decay: weight of ``||theta||^2 / 2`` (>= 0; > 0 for a finite minimiser).
        seed: seed of the cold start (:func:`init_params`).
        gtol: the largest ``max |grad|`` that :meth:`fit` accepts.
        scale: ``N`` in the objective (default: the number of samples, so that masking equals deleting
            when the deleted data keeps the full data's ``N``).
    """

    views: torch.Tensor
    module: nn.Module = field(repr=False)
    tau: float = 0.5
    weight_decay: float = 1e-2
    seed: int = 0
    gtol: float = 1e-10
    scale: float | None = None
    max_iter: int = 2000
    _warm_key: object = field(default=None, init=False, repr=False)
    _warm_inverse: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.views, torch.Tensor) or self.views.ndim != 3 or self.views.shape[0] != 2:
            shape = tuple(self.views.shape) if isinstance(self.views, torch.Tensor) else type(self.views).__name__
            raise InputError(f"views must be a tensor of shape (2, n_samples, n_features), got {shape}.")
        if self.views.shape[1] < 2:
            raise InputError(f"InfoNCE needs at least 2 samples (one positive, one negative), got {self.views.shape[1]}.")
        if not self.tau > 0.0:
            raise InputError(f"tau must be positive, got {self.tau!r}.")
        if not self.weight_decay >= 0.0:
            raise InputError(f"weight_decay must be non-negative, got {self.weight_decay!r}.")
        self.views = self.views.to(_DTYPE)
        self.scale = float(self.views.shape[1] if self.scale is None else self.scale)

    @property
    def n_units(self) -> int:
        """Number of training samples (the units of the mask)."""
        return self.views.shape[1]

    def embed(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Embeddings ``f_theta(inputs)``, (..., dim)."""
        return functional_call(self.module, params, (inputs,))

    def logits(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``S[i, j] = f(a_i) . f(b_j) / tau``, (n, n)."""
        return self.embed(params, self.views[0]) @ self.embed(params, self.views[1]).T / self.tau

    def data_loss(self, logits: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor,
                  negative: torch.Tensor) -> torch.Tensor:
        """The InfoNCE part as a function of the logits (n, n) and the three role masks (n,) each."""
        rows = _infonce_rows(logits, positive, negative) + _infonce_rows(logits.T, positive, negative)
        return (anchor * rows).sum() / (2.0 * self.scale)

    def penalty(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(weight_decay / 2) ||theta||^2``."""
        return 0.5 * self.weight_decay * sum((value ** 2).sum() for value in params.values())

    def loss(self, params: dict[str, torch.Tensor], anchor: torch.Tensor, positive: torch.Tensor,
             negative: torch.Tensor) -> torch.Tensor:
        """The objective with a separate mask per role (n,) each; equal masks give :meth:`objective`."""
        return self.data_loss(self.logits(params), anchor, positive, negative) + self.penalty(params)

    def objective(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The task contract's objective: every role masked by ``mask`` (n,)."""
        check_mask(mask, self.n_units)
        return self.loss(params, mask, mask, mask)

    def role_objective(self, role: str) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        """``objective(params, mask)`` in which ``mask`` acts in one role only (the others kept at 1).

        ``"anchor"`` is the objective a decomposable library sees (a sample owns its own terms only). The
        infinitesimal influences of the three roles sum to the IF of :meth:`objective` (chain rule).
        """
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}.")

        def objective(params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
            masks = {name: mask if name == role else torch.ones_like(mask) for name in ROLES}
            return self.loss(params, masks["anchor"], masks["positive"], masks["negative"])

        return objective

    def init_params(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """The seeded cold start (:func:`init_params` with ``seed``, default the task's)."""
        return init_params(self.module, seed=self.seed if seed is None else seed)

    def fit(self, mask: torch.Tensor | None = None, init: dict[str, torch.Tensor] | None = None
            ) -> dict[str, torch.Tensor]:
        """Minimise the objective at ``mask`` to ``max |grad| <= gtol``.

        From a warm start ``init`` it first tries chord Newton steps ``theta <- theta - H_0^+ g(theta)`` with
        ``H_0`` the pseudo-inverted full-data Hessian at ``init``, factorised once per ``init`` and reused by
        every refit from it (removing one of ``n`` samples changes the Hessian by ``O(1/n)``, so a few steps
        reach ``gtol``; :func:`vif.fit.chord_newton`). Otherwise, or if that stalls, L-BFGS
        (:func:`vif.fit.saddle_free_newton` without its polish) from ``init`` or the seeded cold start to
        ``max |grad| <= 1e-6``, then pseudo-inverse Newton steps to ``gtol``; if those fail too,
        :func:`vif.fit.saddle_free_newton` with its polish from the same start.

        Raises:
            ConvergenceError: ``max |grad| > gtol`` at the end.
        """
        mask = self.views.new_ones(self.n_units) if mask is None else check_mask(mask, self.n_units)
        if init is not None:
            try:  # 39 steps: the chord takes at most 40 gradients
                return chord_newton(self.objective, init, mask, inverse=self._warm_inverse_at(init), gtol=self.gtol,
                                    max_iter=39)
            except ConvergenceError:
                pass
        start = self.init_params() if init is None else init
        try:  # L-BFGS alone to 1e-6, where it starts to crawl; Newton steps (a fresh |H|^+ each) finish
            loose = saddle_free_newton(self.objective, start, mask, gtol=max(self.gtol, 1e-6), max_iter=self.max_iter,
                                       newton_steps=0)
            return chord_newton(self.objective, loose, mask, gtol=self.gtol, max_iter=39)
        except ConvergenceError:
            return saddle_free_newton(self.objective, start, mask, gtol=self.gtol, max_iter=self.max_iter)

    def _warm_inverse_at(self, init: dict[str, torch.Tensor]) -> torch.Tensor:
        """``|H_0|^+`` of the full-data objective at ``init`` (:func:`vif.fit.saddle_free_inverse`), cached."""
        theta, _ = flatten(init)
        key = (theta.shape, hash(theta.detach().cpu().numpy().tobytes()))
        if self._warm_key != key:
            self._warm_key = key
            self._warm_inverse = saddle_free_inverse(self.objective, init, self.views.new_ones(self.n_units))
        return self._warm_inverse

    def heldout_loss(self, views: torch.Tensor) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        """Mask-aware target: the InfoNCE loss of held-out anchors, (n_heldout,).

        For held-out sample ``h`` with views ``(a_h, b_h)`` (``views`` of shape (2, n_heldout, n_features)),
        the candidates are its own other view (the positive) and the other view of every *training* sample
        ``j`` with ``log m_j`` added: a removed sample leaves the held-out denominators too. The value is
        the mean of the two directions (``a_h`` against ``b``'s and ``b_h`` against ``a``'s).
        """
        views = views.to(_DTYPE)
        if views.ndim != 3 or views.shape[0] != 2 or views.shape[2] != self.views.shape[2]:
            raise InputError(f"views must have shape (2, n_heldout, {self.views.shape[2]}), got {tuple(views.shape)}.")

        def target(params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
            train = [self.embed(params, self.views[0]), self.embed(params, self.views[1])]
            held = [self.embed(params, views[0]), self.embed(params, views[1])]
            total = 0.0
            for source in (0, 1):
                own = (held[source] * held[1 - source]).sum(dim=1, keepdim=True) / self.tau
                others = held[source] @ train[1 - source].T / self.tau + log_mask(mask)[None, :]
                total = total + torch.logsumexp(torch.cat([own, others], dim=1), dim=1) - own[:, 0]
            return total / 2.0

        return target

    def cosine_similarity(self, left: torch.Tensor, right: torch.Tensor
                          ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """Rotation-invariant target: ``cos(f(left_p), f(right_p))`` for each pair ``p`` (n_pairs,).

        ``left`` and ``right`` are (n_pairs, n_features) inputs (e.g. clean held-out images).
        """
        if left.shape != right.shape or left.ndim != 2 or left.shape[1] != self.views.shape[2]:
            raise InputError(f"left and right must both have shape (n_pairs, {self.views.shape[2]}), "
                             f"got {tuple(left.shape)} and {tuple(right.shape)}.")
        left, right = left.to(_DTYPE), right.to(_DTYPE)

        def target(params: dict[str, torch.Tensor]) -> torch.Tensor:
            u, v = self.embed(params, left), self.embed(params, right)
            return (u * v).sum(dim=1) / (u.norm(dim=1) * v.norm(dim=1))

        return target
