"""HierFAVG: the client-edge-cloud tree, its equivalence to weighted FedAvg, and its schedule."""

import networkx as nx
import numpy as np
import pytest
from helpers import softmax_workload

from etree.core.errors import ProtocolError
from etree.engine.loop import run_protocol
from etree.network.model import NetworkModel
from etree.network.placement import delay_medoid
from etree.protocols import make_protocol
from etree.trees.hierarchical import TreeProtocol
from topologies import build_topology


def _workload(digits, graph, devices, *, rounds=6, seed=1):
    """Unequal IID shares (5 to 60 samples), so example weighting matters."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 61, size=devices)
    order = rng.permutation(len(digits[1]))
    parts = np.split(order[: sizes.sum()], np.cumsum(sizes)[:-1])
    return softmax_workload(digits, parts, graph, seed=seed, rounds=rounds)


def _setup(digits, graph, devices, **options):
    protocol = make_protocol("hierfavg", "h", options)
    protocol.setup(_workload(digits, graph, devices))
    return protocol


def test_devices_join_their_nearest_edge_server_under_the_cloud(digits):
    graph = build_topology("edge_cloud", 60, seed=5, edge_servers=4)
    tree = _setup(digits, graph, 60).tree
    edges = sorted(n for n, role in graph.nodes(data="role") if role == "edge")
    cloud = next(n for n, role in graph.nodes(data="role") if role == "cloud")
    lengths = {e: nx.single_source_dijkstra_path_length(graph, e, weight="latency_s") for e in edges}
    for device in range(60):
        nearest = min(edges, key=lambda e: (lengths[e][device], e))
        assert int(tree.heads[0][tree.parents[0][device]]) == nearest
    assert tree.depth == 2 and tree.root == cloud


def test_edge_servers_without_devices_are_dropped(digits):
    graph = build_topology("edge_cloud", 12, seed=0, edge_servers=10)
    attached = {next(iter(graph.neighbors(d))) for d in range(12)}
    assert len(attached) < 10  # this draw leaves some servers empty
    tree = _setup(digits, graph, 12).tree
    assert sorted(tree.heads[0].tolist()) == sorted(attached)


def test_without_edge_servers_aggregators_are_seeded_delay_medoids(digits):
    graph = build_topology("random_geometric", 40, seed=2)
    tree = _setup(digits, graph, 40, edge_servers=3).tree
    heads = tree.heads[0]
    assert len(heads) == 3 and np.all(heads < 40)
    net = NetworkModel(graph)
    latency = np.stack([net.latency_s(int(h), np.arange(40)) for h in heads])
    assert np.array_equal(tree.parents[0], np.argmin(latency, axis=0))
    assert tree.root == delay_medoid(net, heads)
    assert np.array_equal(_setup(digits, graph, 40, edge_servers=3).tree.heads[0], heads)


def test_one_epoch_per_aggregation_equals_weighted_fedavg(digits):
    """The example-weighted mean of edge means, weighted by edge sizes, is the global weighted mean."""
    graph = build_topology("edge_cloud", 40, seed=3, edge_servers=3)
    workload = _workload(digits, graph, 40)
    hier = make_protocol("hierfavg", "h", {"kappa1": 1, "kappa2": 1})
    flat = make_protocol("fedavg", "f", {"weighted": True})
    for protocol in (hier, flat):
        list(run_protocol(protocol, workload, rounds=4, eval_every=4))
    ours, theirs = hier.evaluation_models(), flat.evaluation_models()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-5
    assert isinstance(hier, TreeProtocol)
    assert hier.params["1.weight"].std(0).max().item() < 1e-6  # the cloud model was pushed to every device


def test_cloud_aggregates_every_kappa1_times_kappa2_rounds(digits):
    graph = build_topology("edge_cloud", 40, seed=3, edge_servers=3)
    workload = _workload(digits, graph, 40, rounds=12)
    records = list(
        run_protocol(make_protocol("hierfavg", "h", {"kappa1": 2, "kappa2": 3}), workload, rounds=12, eval_every=1)
    )
    counted = {r.round: r.value for r in records if r.metric == "root_aggregations"}
    assert counted == {r: float(r // 6) for r in range(6, 13)}
    sent = {r.round: r.bytes_sent for r in records if r.metric == "accuracy"}
    grew = [r for r in range(1, 13) if sent[r] > sent[r - 1]]
    assert grew == [2, 4, 6, 8, 10, 12]  # models move only on edge aggregations, every kappa1 epochs


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kappa1": 0}, "kappa1"),
        ({"kappa2": 1.5}, "kappa2"),
        ({"edge_servers": True}, "edge_servers"),
        ({"participation": 0.0}, "participation"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ProtocolError, match=rf"protocols\.h\.{field}"):
        make_protocol("hierfavg", "h", options)
