"""The fast paths of large fleets equal the plain computations they replace, on small graphs."""

import networkx as nx
import numpy as np
import pytest
import torch

from clients.classification.evaluation import evaluate_models
from clients.classification.models import build_model
from clients.params import init_params
from etree.network.model import NetworkModel
from etree.trees.kma import kma_assignment, public_accuracy
from topologies import (
    build_topology,
    delays_from,
    link_csgraphs,
    path_bottleneck_bandwidth,
    shortest_path_costs,
    write_graphml,
)
from topologies.loaders import _graphml_node_attributes


@pytest.mark.parametrize("kind", ["random_links", "random_geometric", "edge_cloud"])
def test_one_dijkstra_gives_latency_bandwidth_and_tree(kind: str) -> None:
    graph = build_topology(kind, 60, seed=3)
    sources = np.array([0, 7, 59])
    latency, bandwidth, pred = shortest_path_costs(*link_csgraphs(graph), sources)
    assert np.array_equal(latency, delays_from(graph, sources.tolist()))
    assert np.array_equal(bandwidth, path_bottleneck_bandwidth(graph, sources.tolist()))
    for row, source in enumerate(sources.tolist()):  # every predecessor is one link closer to the source
        for node in range(graph.number_of_nodes()):
            if node != source:
                back = int(pred[row, node])
                assert latency[row, node] == pytest.approx(latency[row, back] + graph.edges[back, node]["latency_s"])


def test_first_links_table_equals_walking_the_tree() -> None:
    graph = build_topology("random_geometric", 80, seed=1)
    network = NetworkModel(graph)
    targets = np.arange(80)
    for source in (0, 33):
        pred = network.predecessors(source)
        expected = []
        for node in targets.tolist():
            if node == source:
                expected.append(-1)
                continue
            while int(pred[node]) != source:
                node = int(pred[node])
            expected.append(int(network.link_ids(np.array([source]), np.array([node]))[0]))
        assert network.first_links(source, targets).tolist() == expected


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_public_accuracy_equals_the_evaluation(kind: str) -> None:
    model = build_model(kind, (12,), 5)
    initial = init_params(model, 0)
    generator = torch.Generator().manual_seed(1)
    stack = {k: v.expand(300, *v.shape) + torch.randn(300, *v.shape, generator=generator) for k, v in initial.items()}
    x, y = torch.randn(200, 12, generator=generator), torch.randint(0, 5, (200,), generator=generator)
    assert np.array_equal(public_accuracy(model, stack, x, y), evaluate_models(model, stack, x, y)[0])


@pytest.mark.parametrize("kind", ["random_geometric", "edge_cloud"])
def test_graphml_writer_writes_what_networkx_writes(kind: str, tmp_path) -> None:
    graph = build_topology(kind, 25, seed=2)
    write_graphml(graph, tmp_path / "fast.graphml")
    plain = nx.Graph()
    plain.graph.update({k: v for k, v in graph.graph.items() if isinstance(v, str | int | float | bool)})
    for node, data in graph.nodes(data=True):
        plain.add_node(node, **_graphml_node_attributes(data))
    plain.add_edges_from(graph.edges(data=True))
    nx.write_graphml(plain, tmp_path / "networkx.graphml")
    assert (tmp_path / "fast.graphml").read_bytes() == (tmp_path / "networkx.graphml").read_bytes()


def _full_sort_assignment(delays, centres, accuracy, delta, candidates):
    """Algorithm 1's assignment with every node's centres sorted up front (the former code)."""
    k, n = delays.shape
    order = np.argsort(delays.T, axis=1, kind="stable")[:, :candidates]
    target = accuracy.mean()
    labels, accepted = np.full(n, -1), np.zeros(n, dtype=bool)
    means, sizes = accuracy[centres].astype(float), np.ones(k)
    labels[centres] = np.arange(k)
    for i in range(n):
        if labels[i] >= 0:
            continue
        choice = -1
        for j in order[i]:
            mean = (means[j] * sizes[j] + accuracy[i]) / (sizes[j] + 1)
            if abs(mean - target) < delta:
                choice, accepted[i] = j, True
                break
        if choice < 0:
            choice = order[i][0]
            mean = (means[choice] * sizes[choice] + accuracy[i]) / (sizes[choice] + 1)
        means[choice], sizes[choice], labels[i] = mean, sizes[choice] + 1, choice
    return labels, accepted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazily_sorted_assignment_equals_sorting_every_node(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = 9, 300
    delays = rng.integers(1, 6, size=(k, n)).astype(float)  # many ties: the lower index must win
    centres = np.sort(rng.choice(n, k, replace=False))
    delays[np.arange(k), centres] = 0.0
    accuracy = rng.uniform(0.1, 0.9, n)
    for delta, candidates in ((0.02, 4), (0.05, 9), (0.09, 1)):
        got = kma_assignment(delays, centres, accuracy, delta, candidates)
        want = _full_sort_assignment(delays, centres, accuracy, delta, candidates)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_path_link_counts_past_46341_nodes() -> None:
    """Link codes are u * n + v: past sqrt(2**31) nodes they need 64 bits (an int32 tree wrapped them)."""
    graph = build_topology("random_links", 50_000, seed=0)
    network = NetworkModel(graph)
    targets = np.random.default_rng(0).choice(50_000, 200, replace=False)
    counts = np.zeros(50_000, dtype=np.int64)
    counts[targets] = 1
    pred = network.predecessors(7)
    expected = np.zeros(graph.number_of_edges())
    for node in targets[targets != 7].tolist():
        while node != 7:
            back = int(pred[node])
            expected[network.link_ids(np.array([back]), np.array([node]))[0]] += 1
            node = back
    assert np.array_equal(network.path_link_counts(7, counts), expected)


def test_model_evaluation_in_chunks_bounded_by_logits_gives_the_same_scores() -> None:
    """Many models on a large test set go a few at a time (their logits bounded), with the same scores."""
    model = build_model("softmax", (20,), 5)
    models = {name: torch.stack([init_params(model, seed=s)[name] for s in range(7)]) for name in init_params(model, 0)}
    x, y = torch.randn(300, 20), torch.randint(0, 5, (300,))
    whole = evaluate_models(model, models, x, y)
    chunked = evaluate_models(model, models, x, y, chunk_floats=2 * 300 * 5)  # two models per chunk
    assert np.array_equal(whole[0], chunked[0]) and np.allclose(whole[1], chunked[1])
    assert len(whole[0]) == 7 and len(set(whole[0].tolist())) > 1
