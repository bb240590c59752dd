"""DeepWalk-style skip-gram node embedding with a node mask (the units are nodes).

Model. Every node ``u`` has an input embedding ``U[u]`` and an output embedding ``V[u]`` (``dim`` each;
``params = {"input": U, "output": V}``, both (n_nodes, dim)). The logit of context ``v`` for centre ``u``
is ``S[u, v] = U[u] . V[v]``, and the full softmax runs over all kept nodes. Given (centre, context)
counts ``C_m`` of random walks on the graph without the removed nodes, the objective is

    L(theta, m) = (1 / Z) sum_{u,v} C_m[u, v] * (logsumexp_w(S[u, w] + log m_w) - S[u, v])
                  + (l2 / (2 n)) * ||theta||^2,

the mean skip-gram cross-entropy per (centre, context) pair of the full graph (``Z`` = number of pairs in
the full graph's walks, a constant) plus an L2 term on the mean squared norm of a node's two embeddings
(so that one ``l2`` means the same on graphs of any size ``n``). ``m`` enters in three places: the adjacency is
weighted ``A[u, v] m_u m_v`` (so a removed node's row and column are dropped and the other rows of the
transition matrix renormalised), walks start ``m_u`` times from node ``u``, and ``log m`` is added to
the softmax logits. Removing a node therefore changes the counts of pairs it is not part of: the loss does
not decompose over nodes.

Counts. ``expected=True`` uses the expected counts of one uniform random walk of ``walk_length`` nodes
started from every node, a window of ``window`` steps on both sides (DeepWalk as matrix factorisation,
Qiu et al. 2018): deterministic and differentiable in ``m``. ``expected=False`` samples ``walks_per_node``
walks per node with a seeded pure-PyTorch walker; the uniforms are drawn once, so every mask reuses the
same random numbers (common random numbers: the LOO objective differs from the full one only where the
removed node changes a walk). Sampled counts are piecewise constant in ``m``; use them with the finite
difference (``method="vif"``), not with the infinitesimal IF.

Symmetry. ``S`` is unchanged by ``(U, V) -> (U R, V R)`` for orthogonal ``R``; with the L2 term this
rotation is a flat direction of the loss, so the Hessian at a minimum has ``dim (dim - 1) / 2`` zero
eigenvalues. Targets built from ``S`` or from ``U U^T`` are rotation invariant, so their gradients (and the
masked-loss gradients) are orthogonal to that null space: a pseudo-inverse or any damping gives the same
influence along it. The Newton polish in :func:`fit` uses the pseudo-inverse for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..fit import saddle_free_newton
from ..params import check_mask
from ._penalty import check_l2

__all__ = [
    "SkipGram",
    "adjacency",
    "expected_counts",
    "random_walks",
    "objective",
    "init_params",
    "fit",
    "logits",
    "pair_loss",
    "link_score",
]

_DTYPE = torch.float64


def adjacency(graph, *, dtype: torch.dtype = _DTYPE) -> torch.Tensor:
    """Dense symmetric 0/1 adjacency (n_nodes, n_nodes) of a torch-geometric ``Data``; self-loops dropped."""
    if not hasattr(graph, "edge_index") or graph.num_nodes is None:
        raise InputError(
            f"graph must be a torch_geometric.data.Data with edge_index and num_nodes, got {type(graph).__name__}; "
            "convert a networkx graph with torch_geometric.utils.from_networkx."
        )
    n = int(graph.num_nodes)
    edges = graph.edge_index
    matrix = torch.zeros(n, n, dtype=dtype, device="cpu")
    matrix[edges[0], edges[1]] = 1.0
    matrix = torch.maximum(matrix, matrix.T)
    matrix.fill_diagonal_(0.0)
    return matrix


def _transition(adj: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked weights ``A * m m^T`` and row sums; a row with no kept neighbour is all zeros (walk stops)."""
    weights = adj * mask[:, None] * mask[None, :]
    degree = weights.sum(dim=1)
    safe = torch.where(degree > 0, degree, torch.ones_like(degree))
    return weights / safe[:, None], degree


def expected_counts(adj: torch.Tensor, mask: torch.Tensor, *, window: int, walk_length: int) -> torch.Tensor:
    """Expected (centre, context) pair counts of one uniform walk started from every kept node.

    Args:
        adj: adjacency (n, n), symmetric, non-negative.
        mask: node mask (n,); node ``u`` starts ``mask[u]`` walks and edge ``(u, v)`` has weight
            ``A[u, v] m_u m_v``.
        window: context window (steps on each side).
        walk_length: nodes per walk (``T``).

    Returns:
        Symmetric counts (n, n): ``C = sum_{k=1..window} sum_{t=0..T-1-k} diag(q_t) P^k`` plus its
        transpose, where ``q_t = m^T P^t`` is the expected number of walkers at each node at step ``t``.
    """
    transition, _ = _transition(adj, mask)
    visits = [mask]
    for _ in range(walk_length - 1):
        visits.append(visits[-1] @ transition)
    counts = torch.zeros_like(adj)
    power = torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
    for lag in range(1, min(window, walk_length - 1) + 1):
        power = power @ transition
        centres = torch.stack(visits[: walk_length - lag]).sum(dim=0)
        counts = counts + centres[:, None] * power
    return counts + counts.T


def _walk(adj: torch.Tensor, mask: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Walks driven by fixed uniforms: nodes (n_walks, T) and weights (n_walks, T), 0 once a walk stops.

    Walk ``r`` starts at node ``r % n``; step ``t`` picks the neighbour where the cumulative masked edge
    weight first reaches ``uniforms[r, t] * degree`` (inverse-CDF sampling, uniforms in (0, 1]).
    """
    n = adj.shape[0]
    weights = adj * mask[:, None] * mask[None, :]
    cumulative = weights.cumsum(dim=1)
    degree = cumulative[:, -1]
    node = torch.arange(uniforms.shape[0], device=adj.device) % n
    alive = mask[node]
    nodes, alives = [node], [alive]
    for step in range(uniforms.shape[1]):
        threshold = uniforms[:, step] * degree[node]
        alive = alive * (degree[node] > 0).to(adj.dtype)
        node = (cumulative[node] < threshold[:, None]).sum(dim=1).clamp(max=n - 1)
        nodes.append(node)
        alives.append(alive)
    return torch.stack(nodes, dim=1), torch.stack(alives, dim=1)


def random_walks(graph, *, walks_per_node: int, walk_length: int, seed: int = 0,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform random walks (DeepWalk, node2vec with p = q = 1) on the graph without masked-out nodes.

    Returns:
        Long tensor (walks_per_node * n_nodes, walk_length); walk ``r`` starts at node ``r % n_nodes``;
        ``-1`` marks the steps after a walk got stuck and the walks started from removed nodes.
    """
    adj = adjacency(graph)
    mask = adj.new_ones(adj.shape[0]) if mask is None else check_mask(mask.to(adj.dtype), adj.shape[0])
    nodes, alive = _walk(adj, mask, _uniforms(adj.shape[0] * walks_per_node, walk_length, seed, adj.dtype))
    return torch.where(alive > 0, nodes, torch.full_like(nodes, -1))


def _uniforms(n_walks: int, walk_length: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 1.0 - torch.rand(n_walks, walk_length - 1, generator=generator, dtype=dtype, device="cpu")


def _sampled_counts(adj: torch.Tensor, mask: torch.Tensor, uniforms: torch.Tensor, window: int) -> torch.Tensor:
    """Symmetric pair counts of the walks driven by ``uniforms`` (weights ``m_start``), shape (n, n)."""
    nodes, alive = _walk(adj, mask, uniforms)
    onehot = (nodes[..., None] == torch.arange(adj.shape[0], device=adj.device)).to(adj.dtype)
    counts = torch.zeros_like(adj)
    for lag in range(1, window + 1):
        left = onehot[:, :-lag] * alive[:, lag:, None]
        counts = counts + torch.einsum("rtu,rtv->uv", left, onehot[:, lag:])
    return counts + counts.T


def _pairs_per_walk(walk_length: int, window: int) -> int:
    return 2 * sum(walk_length - lag for lag in range(1, window + 1) if lag < walk_length)


@dataclass
class SkipGram:
    """Skip-gram objective ``objective(params, mask) -> scalar`` (see the module docstring).

    Build it with :func:`objective`. ``counts(mask)`` gives the (centre, context) counts (n, n) and
    ``data_loss(S, mask)`` the cross-entropy part as a function of the logits ``S = U V^T``.
    """

    adj: torch.Tensor
    dim: int
    window: int
    walk_length: int
    l2: float
    expected: bool
    walks_per_node: int
    seed: int
    uniforms: torch.Tensor | None = field(default=None, repr=False)
    gtol: float = 1e-10

    @property
    def n_units(self) -> int:
        """Number of nodes (the units of the mask)."""
        return self.adj.shape[0]

    @property
    def penalty_weight(self) -> float:
        """Weight ``l2 / n`` of ``||theta||^2 / 2`` in the objective."""
        return self.l2 / self.n_units

    @property
    def scale(self) -> float:
        """``Z``: the number of (centre, context) pairs in the walks of the full graph (no walk stuck)."""
        walks = 1 if self.expected else self.walks_per_node
        return float(self.n_units * walks * _pairs_per_walk(self.walk_length, self.window))

    def counts(self, mask: torch.Tensor) -> torch.Tensor:
        """Pair counts (n, n) for a node mask (n,)."""
        if self.expected:
            return expected_counts(self.adj, mask, window=self.window, walk_length=self.walk_length)
        return _sampled_counts(self.adj, mask, self.uniforms, self.window)

    def data_loss(self, scores: torch.Tensor, mask: torch.Tensor,
                  counts: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy part of the loss for logits ``scores`` (n, n) with the masked softmax.

        ``counts`` (n, n) may be passed when they are already known for this mask (they do not depend on
        the parameters); by default they are computed from ``mask``.
        """
        counts = self.counts(mask) if counts is None else counts
        normaliser = torch.logsumexp(scores + _log_mask(mask)[None, :], dim=1)
        return ((counts.sum(dim=1) * normaliser).sum() - (counts * scores).sum()) / self.scale

    def __call__(self, params: dict[str, torch.Tensor], mask: torch.Tensor,
                 counts: torch.Tensor | None = None) -> torch.Tensor:
        """The objective (scalar); ``counts`` (n, n) optional, as in :meth:`data_loss`."""
        check_mask(mask, self.n_units)
        penalty = 0.5 * self.penalty_weight * ((params["input"] ** 2).sum() + (params["output"] ** 2).sum())
        if counts is None and self.expected:
            return self._factored_loss(params, mask) + penalty
        return self.data_loss(logits(params), mask, counts) + penalty

    def objective(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The task contract's objective (:class:`vif.task.Task`): the same as calling the object."""
        return self(params, mask)

    def fit(self, mask: torch.Tensor | None = None, init: dict[str, torch.Tensor] | None = None
            ) -> dict[str, torch.Tensor]:
        """The task contract's fit: :func:`fit` from ``init`` or from the seeded cold start, to ``gtol``."""
        return fit(self, mask=mask, init=init, seed=self.seed, gtol=self.gtol)

    def _factored_loss(self, params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """``data_loss`` with expected counts, without forming ``P^k`` or ``C``: O(window * n^2 * dim).

        With ``C_k = diag(M_k) P^k`` and ``M_k = sum_{t < T - k} q_t``: the row sums of ``C_k + C_k^T`` are
        ``M_k * (P^k 1) + (M_k^T P^k)``, and ``<C_k + C_k^T, U V^T> = sum_u M_k[u] (U_u . (P^k V)_u +
        V_u . (P^k U)_u)``; only products of ``P`` with (n, dim) matrices and vectors are needed.
        """
        transition, _ = _transition(self.adj, mask)
        U, V = params["input"], params["output"]
        visits = [mask]
        for _ in range(self.walk_length - 1):
            visits.append(visits[-1] @ transition)
        stacked = torch.cat([torch.ones_like(mask)[:, None], U, V], dim=1)
        rows, linear = torch.zeros_like(mask), mask.new_zeros(())
        for lag in range(1, min(self.window, self.walk_length - 1) + 1):
            stacked = transition @ stacked  # P^k [1, U, V]
            centres = torch.stack(visits[: self.walk_length - lag]).sum(dim=0)
            reached = centres
            for _ in range(lag):
                reached = reached @ transition  # M_k^T P^k
            ones_k, U_k, V_k = stacked[:, :1].squeeze(1), stacked[:, 1:1 + self.dim], stacked[:, 1 + self.dim:]
            rows = rows + centres * ones_k + reached
            linear = linear + (centres * ((U * V_k).sum(dim=1) + (V * U_k).sum(dim=1))).sum()
        normaliser = torch.logsumexp(logits(params) + _log_mask(mask)[None, :], dim=1)
        return ((rows * normaliser).sum() - linear) / self.scale


def _log_mask(mask: torch.Tensor) -> torch.Tensor:
    """``log m`` with ``log 0`` replaced by ``log(tiny)`` (about -708 in float64).

    ``exp`` of it underflows to 0 exactly as for ``-inf``, but gradients stay finite.
    """
    return torch.log(mask.clamp_min(torch.finfo(mask.dtype).tiny))


def objective(graph, *, dim: int = 2, window: int = 3, walk_length: int = 6, l2: float = 0.0,
              expected: bool = True, walks_per_node: int = 10, seed: int = 0,
              dtype: torch.dtype = _DTYPE) -> SkipGram:
    """Skip-gram objective of a graph with nodes as units.

    Args:
        graph: torch-geometric ``Data`` (``edge_index``, ``num_nodes``); the graph is used unweighted.
        dim: embedding dimension (the paper uses 2).
        window: context window on each side of the centre.
        walk_length: nodes per walk.
        l2: weight of ``(l2 / (2 n_nodes)) ||theta||^2``; a positive value is needed for a finite minimiser.
        expected: expected walk counts (deterministic, differentiable in the mask) or sampled walks.
        walks_per_node: walks started per node when ``expected=False``.
        seed: seed of the sampled walks' uniforms (``expected=False``).
        dtype: floating dtype of the adjacency, counts and mask.

    Returns:
        :class:`SkipGram`, callable as ``objective(params, mask)`` with ``mask`` (n_nodes,).

    Raises:
        InputError: non-positive sizes, negative ``l2``, or a graph that is not a ``Data``.
    """
    for name, value in (("dim", dim), ("window", window), ("walk_length", walk_length),
                        ("walks_per_node", walks_per_node)):
        if int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if walk_length < 2:
        raise InputError(f"walk_length must be at least 2 to form a (centre, context) pair, got {walk_length}.")
    l2 = check_l2(l2)
    adj = adjacency(graph, dtype=dtype)
    uniforms = None if expected else _uniforms(adj.shape[0] * walks_per_node, walk_length, seed, dtype)
    return SkipGram(adj, dim, window, walk_length, float(l2), expected, walks_per_node, seed, uniforms)


def logits(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Skip-gram logits ``S = U V^T`` (n, n); ``S[u, v]`` scores context ``v`` for centre ``u``."""
    return params["input"] @ params["output"].T


def pair_loss(pairs: torch.Tensor) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """Mask-aware target: ``-log softmax_m(S[j])[k]`` for each pair ``(j, k)`` in ``pairs`` (n_pairs, 2).

    The removed node is left out of the softmax; a pair that contains it is undefined (about 708 in
    float64) and must be excluded from evaluations. Returns ``target(params, mask) -> (n_pairs,)``.
    """
    centre, context = pairs[:, 0], pairs[:, 1]

    def target(params: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        scores = params["input"][centre] @ params["output"].T
        normaliser = torch.logsumexp(scores + _log_mask(mask)[None, :], dim=1)
        return normaliser - scores.gather(1, context[:, None]).squeeze(1)

    return target


def link_score(pairs: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Target: link score ``U[j] . U[k]`` (input embeddings, rotation invariant) per pair (n_pairs, 2)."""

    def target(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (params["input"][pairs[:, 0]] * params["input"][pairs[:, 1]]).sum(dim=1)

    return target


def init_params(n_nodes: int, dim: int, *, seed: int = 0, dtype: torch.dtype = _DTYPE) -> dict[str, torch.Tensor]:
    """The paper's initialisation: input and output embeddings drawn from U(0, 1) with a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return {"input": torch.rand(n_nodes, dim, generator=generator, dtype=dtype, device="cpu"),
            "output": torch.rand(n_nodes, dim, generator=generator, dtype=dtype, device="cpu")}


def fit(graph, *, mask: torch.Tensor | None = None, init: dict[str, torch.Tensor] | None = None, seed: int = 0,
        gtol: float = 1e-10, max_iter: int = 3000, newton_steps: int = 50, **config) -> dict[str, torch.Tensor]:
    """Train the embeddings: L-BFGS from ``init`` (or the seeded U(0, 1) start), then a Newton polish.

    Args:
        graph: torch-geometric ``Data`` or an already built :class:`SkipGram` objective.
        mask: node mask (n_nodes,); ``None`` keeps every node.
        init: warm start ``{"input", "output"}`` (not modified); ``None`` starts cold from :func:`init_params`.
        seed: seed of the cold start.
        gtol, max_iter, newton_steps: see :func:`vif.fit.saddle_free_newton`. The skip-gram loss is a mean
            cross-entropy of order ``log n`` and LOO changes of targets are of order 1e-3 to 1e-1, so the
            default ``gtol = 1e-10`` makes them signal.
        **config: forwarded to :func:`objective` (``dim``, ``window``, ``walk_length``, ``l2``, ...).

    Returns:
        ``{"input": U, "output": V}``, each (n_nodes, dim), detached.

    Raises:
        ConvergenceError: ``max |grad| > gtol`` after the polish.
    """
    loss = graph if isinstance(graph, SkipGram) else objective(graph, **config)
    mask = loss.adj.new_ones(loss.n_units) if mask is None else check_mask(mask, loss.n_units)
    start = init_params(loss.n_units, loss.dim, seed=seed, dtype=loss.adj.dtype) if init is None else init
    counts = loss.counts(mask)  # the counts do not depend on the parameters: compute them once
    return saddle_free_newton(lambda params, m: loss(params, m, counts), start, mask, gtol=gtol,
                              max_iter=max_iter, newton_steps=newton_steps)
