"""Skip-gram node embedding: counts against brute-force walk enumeration, the mask against node deletion,
symmetries, fits, PBRF, and VIF against exact leave-one-out refits."""

import itertools

import pytest
import torch
from torch.func import grad, hessian, jacrev
from torch_geometric.data import Data
from torch_geometric.utils import subgraph

import vif
from vif.datasets import graphs
from vif.errors import ConvergenceError, InputError, MaskError
from vif.experiments import node_embedding as experiment
from vif.params import flatten, removal_mask
from vif.tasks import embedding


def small_graph() -> Data:
    """A 6-node graph with a triangle, a tail and a pendant node (node 5 hangs on node 4)."""
    edges = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 3], [3, 4], [4, 5], [1, 3]]).T
    return Data(edge_index=torch.cat([edges, edges.flip(0)], dim=1), num_nodes=6)


def enumerated_counts(adj: torch.Tensor, kept: list[int], window: int, walk_length: int) -> torch.Tensor:
    """Expected pair counts by summing over every walk with its probability (independent of matrix powers)."""
    n = adj.shape[0]
    counts = torch.zeros(n, n, dtype=torch.float64)

    def extend(walk, probability):
        neighbours = [v for v in kept if adj[walk[-1], v] > 0]
        if len(walk) == walk_length or not neighbours:
            for t, s in itertools.product(range(len(walk)), repeat=2):
                if 0 < abs(t - s) <= window:
                    counts[walk[t], walk[s]] += probability
            return
        for v in neighbours:
            extend(walk + [v], probability / len(neighbours))

    for start in kept:
        extend([start], 1.0)
    return counts


@pytest.mark.parametrize("removed", [None, 2, 4])
def test_expected_counts_match_enumerated_walks(removed):
    adj = embedding.adjacency(small_graph())
    kept = [v for v in range(6) if v != removed]
    mask = torch.ones(6, dtype=torch.float64) if removed is None else removal_mask(6, removed, adj)
    counts = embedding.expected_counts(adj, mask, window=2, walk_length=4)
    torch.testing.assert_close(counts, enumerated_counts(adj, kept, window=2, walk_length=4), rtol=1e-12, atol=1e-12)


def test_sampled_counts_average_to_expected_counts():
    graph = small_graph()
    sampled = embedding.objective(graph, expected=False, walks_per_node=4000, window=2, walk_length=4, seed=3)
    exact = embedding.objective(graph, window=2, walk_length=4)
    mask = removal_mask(6, 3, sampled.adj)
    torch.testing.assert_close(sampled.counts(mask) / 4000, exact.counts(mask), atol=0.02, rtol=0.03)


def test_random_walks_follow_edges_avoid_removed_nodes_and_repeat_with_the_seed():
    graph = graphs.karate()
    adj = embedding.adjacency(graph)
    mask = removal_mask(34, 0, adj)
    walks = embedding.random_walks(graph, walks_per_node=5, walk_length=8, seed=1, mask=mask)
    assert walks.shape == (170, 8)
    assert not (walks == 0).any()
    assert (walks[walks[:, 0] >= 0, 0] == (torch.arange(170) % 34)[walks[:, 0] >= 0]).all()
    for walk in walks.tolist():
        steps = [v for v in walk if v >= 0]
        assert all(adj[a, b] == 1 for a, b in zip(steps, steps[1:]))
    assert (walks[11, 1:] == -1).all()  # node 11's only neighbour is node 0: its walk stops at once
    assert torch.equal(walks, embedding.random_walks(graph, walks_per_node=5, walk_length=8, seed=1, mask=mask))


def test_removing_a_node_equals_deleting_it_from_the_graph():
    graph, removed = small_graph(), 1
    loss = embedding.objective(graph, window=2, walk_length=4)  # l2 = 0: compare the cross-entropy terms
    params = embedding.init_params(6, 2, seed=5)
    keep = torch.tensor([v for v in range(6) if v != removed])
    edge_index, _ = subgraph(keep, graph.edge_index, relabel_nodes=True, num_nodes=6)
    smaller = embedding.objective(Data(edge_index=edge_index, num_nodes=5), window=2, walk_length=4)
    kept_params = {name: value[keep] for name, value in params.items()}
    # each objective divides by its own graph's pair count Z: compare the summed cross-entropies
    masked = loss(params, removal_mask(6, removed, loss.adj)) * loss.scale
    deleted = smaller(kept_params, torch.ones(5, dtype=torch.float64)) * smaller.scale
    torch.testing.assert_close(masked, deleted, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 5])
def test_matrix_free_loss_equals_the_loss_on_explicit_counts(dim):
    loss = embedding.objective(graphs.karate(), dim=dim, l2=0.3, window=3, walk_length=6)
    params = embedding.init_params(34, dim, seed=dim)
    penalty = 0.5 * loss.penalty_weight * sum(float((value ** 2).sum()) for value in params.values())
    for mask in (torch.ones(34, dtype=torch.float64), removal_mask(34, 0, loss.adj),
                 torch.rand(34, generator=torch.Generator().manual_seed(1), dtype=torch.float64)):
        explicit = loss.data_loss(embedding.logits(params), mask, loss.counts(mask)) + penalty
        torch.testing.assert_close(loss(params, mask), explicit, rtol=1e-13, atol=0.0)


def test_mask_enters_differentiably():
    loss = embedding.objective(graphs.karate(), l2=0.3)
    params = embedding.init_params(34, 2, seed=0)
    ones = torch.ones(34, dtype=torch.float64)
    derivative = grad(lambda mask: loss(params, mask))(ones)
    step = 1e-6
    for unit in (0, 11, 33):
        direction = torch.zeros(34, dtype=torch.float64)
        direction[unit] = step
        finite = (loss(params, ones + direction) - loss(params, ones - direction)) / (2 * step)
        torch.testing.assert_close(derivative[unit], finite, rtol=1e-6, atol=1e-9)
    masked = grad(lambda p: loss(p, removal_mask(34, 0, ones)))(params)
    assert all(bool(torch.isfinite(value).all()) for value in masked.values())


def test_rotation_invariance_and_hessian_null_space_at_the_fit():
    loss = embedding.objective(graphs.karate(), l2=0.3)
    params = embedding.fit(loss)
    ones = torch.ones(34, dtype=torch.float64)
    angle = torch.tensor(0.7, dtype=torch.float64)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    rotated = {name: value @ rotation for name, value in params.items()}
    torch.testing.assert_close(loss(rotated, ones), loss(params, ones), rtol=1e-13, atol=0.0)
    theta, unflatten = flatten(params)
    eigenvalues = torch.linalg.eigvalsh(hessian(lambda v: loss(unflatten(v), ones))(theta))
    assert float(grad(lambda v: loss(unflatten(v), ones))(theta).abs().max()) <= 1e-10
    assert int((eigenvalues.abs() < 1e-10).sum()) == 1  # dim (dim - 1) / 2 = 1 rotation
    assert float(eigenvalues[1]) > 1e-4  # otherwise a strict minimum


def test_cold_fit_is_reproducible_and_warm_fit_stays_put():
    loss = embedding.objective(graphs.karate(), l2=0.3)
    first, second = embedding.fit(loss, seed=4), embedding.fit(loss, seed=4)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    warm = embedding.fit(loss, init=first)
    torch.testing.assert_close(warm, first, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def karate_problem():
    return experiment.setup(experiment.settings(quick=True))


def test_vif_tracks_exact_leave_one_out(karate_problem):
    units = [0, 5, 11, 16, 25, 33]
    predicted = vif.influence(karate_problem.loss, karate_problem.params, karate_problem.target, n_units=34,
                              hessian="pinv", units=units)
    actual = vif.leave_one_out(karate_problem.loss, karate_problem.params,
                               karate_problem.target, n_units=34, units=units, progress=False)
    stats = vif.metrics.correlations(predicted, actual, valid=karate_problem.valid()[units], across="targets")
    assert stats.pearson > 0.9
    assert float((predicted - actual).abs().max()) < float(actual.abs().max())  # same scale, same sign


def test_targets_containing_the_removed_node_are_excluded(karate_problem):
    valid = karate_problem.valid()
    both = torch.cat([karate_problem.pairs, karate_problem.links])
    assert valid.shape == (34, len(both)) and len(karate_problem.pairs) == 34 * 33 and len(karate_problem.links) == 561
    for column in (0, 500, len(both) - 1):
        excluded = set((~valid[:, column]).nonzero().flatten().tolist())
        assert excluded == set(both[column].tolist())
    with pytest.raises(InputError, match="kind must be one of"):
        experiment.ground_truth(karate_problem, "hot")


def test_pbrf_is_stationary_at_the_fit_and_its_hessian_is_gauss_newton(karate_problem):
    loss, params = karate_problem.loss, karate_problem.params
    damping = 0.3
    objective = experiment.pbrf_objective(loss, params, damping)
    theta, unflatten = flatten(params)
    ones = torch.ones(34, dtype=torch.float64)
    assert float(grad(lambda v: objective(unflatten(v), ones))(theta).abs().max()) < 1e-9
    jacobian = jacrev(lambda v: embedding.logits(unflatten(v)).reshape(-1))(theta)
    curvature = hessian(lambda s: loss.data_loss(s.reshape(34, 34), ones))(embedding.logits(params).reshape(-1))
    gauss_newton = jacobian.T @ curvature @ jacobian + (loss.penalty_weight + damping) * torch.eye(len(theta), dtype=theta.dtype)
    torch.testing.assert_close(hessian(lambda v: objective(unflatten(v), ones))(theta), gauss_newton,
                               rtol=1e-9, atol=1e-11)


def test_pbrf_with_large_damping_matches_its_linearisation(karate_problem):
    damping, units = 10.0, [0, 33]
    response = experiment.ground_truth(karate_problem, "pbrf", damping=damping)[units]
    linear = experiment.estimate(karate_problem, damping=damping, gauss_newton=True)[units]
    valid = karate_problem.valid()[units]
    error = (response - linear)[valid].abs().max() / response[valid].abs().max()
    assert float(error) < 0.05


def test_sampled_walk_objective_works_with_vif():
    loss = embedding.objective(small_graph(), l2=0.5, expected=False, walks_per_node=50, window=2, walk_length=4)
    params = embedding.fit(loss)
    target = embedding.link_score(torch.tensor([[0, 3], [2, 5]]))
    predicted = vif.influence(loss, params, target, n_units=6, hessian="pinv", units=[1, 3])
    actual = vif.leave_one_out(lambda mask, init: embedding.fit(loss, mask=mask, init=init), params, target,
                               n_units=6, units=[1, 3], progress=False)
    assert predicted.shape == (2, 2)
    assert float((predicted - actual).abs().max()) < 0.5 * float(actual.abs().max())


def test_bad_inputs_raise_precise_errors():
    graph = graphs.karate()
    with pytest.raises(InputError, match="from_networkx"):
        embedding.objective("karate")
    with pytest.raises(InputError, match="dim must be a positive integer"):
        embedding.objective(graph, dim=0)
    with pytest.raises(InputError, match="walk_length must be at least 2"):
        embedding.objective(graph, walk_length=1)
    with pytest.raises(InputError, match=r"l2 \(the L2 penalty\) must be a finite number >= 0, got -1.0"):
        embedding.objective(graph, l2=-1.0)
    with pytest.raises(MaskError, match="shape"):
        embedding.objective(graph)(embedding.init_params(34, 2), torch.ones(33, dtype=torch.float64))
    with pytest.raises(ConvergenceError, match="max\\|grad\\|"):
        embedding.fit(graph, l2=0.3, max_iter=2, newton_steps=0)
    with pytest.raises(InputError, match="Unknown graph"):
        graphs.load_graph("cora")


def test_graph_loaders():
    karate = graphs.karate()
    assert karate.num_nodes == 34 and karate.edge_index.shape[1] == 156
    assert int(karate.club.sum()) == 17 and karate.club[0] == 0 and karate.club[33] == 1
    miserables = graphs.les_miserables()
    assert miserables.num_nodes == 77 and miserables.edge_index.shape[1] == 2 * 254
    block = graphs.sbm(200, seed=1)
    assert block.num_nodes == 200 and torch.equal(block.edge_index, graphs.sbm(200, seed=1).edge_index)
    adj = embedding.adjacency(block)
    inside = adj[block.y[:, None] == block.y[None, :]].sum() / 200
    assert 6.0 < float(inside) < 10.0  # about degree_in = 8 neighbours in the own block
