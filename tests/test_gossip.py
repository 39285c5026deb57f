"""Gossip learning: merge arithmetic, overlays, message timing, determinism, scale and learning."""

import networkx as nx
import numpy as np
import pytest
import torch
from helpers import softmax_workload

from etree.core.errors import ProtocolError
from etree.engine.loop import run_protocol
from etree.network.model import NetworkModel
from etree.protocols import make_protocol
from etree.protocols.gossip import (
    device_transfer_matrix,
    graph_overlay,
    merge_ages,
    merge_models,
    neighbour_choice,
    overlay_bounds,
    pair_transfer_s,
    random_peers,
)
from topologies import build_topology, latency_csgraph


def _workload(digits, parts, graph, *, seed=1, rounds=15):
    return softmax_workload(digits, parts, graph, seed=seed, rounds=rounds)


def _iid(digits, devices, seed=1):
    return np.array_split(np.random.default_rng(seed).permutation(len(digits[1])), devices)


def _label_sorted(digits, devices):
    """Contiguous slices of the label-sorted data: 1-2 classes per device (the authors' non-IID files)."""
    return np.array_split(np.argsort(digits[1], kind="stable"), devices)


def _final(protocol, workload, rounds):
    records = list(run_protocol(protocol, workload, rounds=rounds, eval_every=rounds))
    return {r.metric: r.value for r in records if r.round == rounds}


# -- merge arithmetic -------------------------------------------------------
def test_average_merge_on_three_devices():
    # 0 -> 1, 1 -> 2, 2 -> 1: device 1 hears two models, device 2 one, device 0 none.
    params = {"w": torch.tensor([[1.0], [2.0], [4.0]])}
    merged = merge_models(params, torch.tensor([1, 2, 1]))
    assert torch.allclose(merged["w"].flatten(), torch.tensor([1.0, 7.0 / 3.0, 3.0]))
    assert params["w"].flatten().tolist() == [1.0, 2.0, 4.0]  # inputs are never mutated


def test_age_merge_on_three_devices():
    params = {"w": torch.tensor([[1.0], [2.0], [4.0]])}
    ages = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    peers = torch.tensor([1, 2, 1])
    merged = merge_models(params, peers, ages)
    expected = [1.0, (2 * 2 + 1 * 1 + 3 * 4) / 6, (3 * 4 + 2 * 2) / 5]
    assert torch.allclose(merged["w"].flatten(), torch.tensor(expected))
    assert merge_ages(ages, peers).tolist() == [1.0, 3.0, 3.0]


def test_age_merge_with_no_history_is_the_plain_average():
    params = {"w": torch.tensor([[1.0], [2.0], [4.0]])}
    peers = torch.tensor([1, 2, 1])
    fresh = merge_models(params, peers, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(fresh["w"], merge_models(params, peers)["w"])
    # an untrained receiver takes an experienced sender's model outright (a = t_r / (t_k + t_r) = 1)
    two = {"w": torch.tensor([[1.0], [2.0]])}
    taken = merge_models(two, torch.tensor([1, 0]), torch.tensor([5.0, 0.0], dtype=torch.float64))
    assert taken["w"].flatten().tolist() == [1.0, 1.0]  # device 0 hears an age-0 model: weight 0


def test_identical_models_merge_to_themselves():
    model = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    params = {"w": model.repeat(5, 1, 1)}
    peers = torch.tensor([3, 3, 0, 4, 1])
    for ages in (None, torch.tensor([1.0, 9.0, 0.0, 2.0, 4.0], dtype=torch.float64)):
        assert torch.allclose(merge_models(params, peers, ages)["w"], params["w"], atol=1e-6)


# -- peers and overlays -----------------------------------------------------
def test_random_peers_are_others_and_reproducible():
    peers = random_peers(7, 3, 1000)
    assert peers.min() >= 0 and peers.max() < 1000
    assert not np.any(peers == np.arange(1000))
    assert np.array_equal(peers, random_peers(7, 3, 1000))
    assert not np.array_equal(peers, random_peers(7, 4, 1000))
    with pytest.raises(ProtocolError, match="at least 2 devices"):
        random_peers(7, 3, 1)


def test_graph_overlay_is_the_device_neighbourhood():
    graph = build_topology("random_geometric", 60, seed=4)
    indptr, indices, relayed = graph_overlay(latency_csgraph(graph), 60)
    assert len(relayed) == 0
    for d in range(60):
        assert sorted(indices[indptr[d] : indptr[d + 1]].tolist()) == sorted(graph.neighbors(d))
    slot = neighbour_choice(7, 1, indptr)
    assert np.all((slot >= indptr[:-1]) & (slot < indptr[1:]))


def test_edge_cloud_devices_gossip_through_their_edge_server():
    graph = build_topology("edge_cloud", 80, seed=2, edge_servers=3)
    indptr, indices, relayed = graph_overlay(latency_csgraph(graph), 80)
    assert len(relayed) == 80  # devices touch only edge servers
    server = {d: next(iter(graph.neighbors(d))) for d in range(80)}
    for d in range(80):
        partners = indices[indptr[d] : indptr[d + 1]]
        assert d not in partners
        assert sorted(partners.tolist()) == sorted(e for e in range(80) if e != d and server[e] == server[d])


def test_a_device_with_nobody_to_gossip_with_is_refused():
    graph = nx.Graph()
    graph.add_edges_from([(0, 3), (1, 3), (2, 4), (3, 4)], latency_s=0.01)
    with pytest.raises(ProtocolError, match=r"device\(s\) \[2\].*overlay = 'random'"):
        graph_overlay(latency_csgraph(graph), 3)


# -- timing -----------------------------------------------------------------
def _check_pair_times(graph, devices, nbytes):
    net = NetworkModel(graph)
    indptr, indices, _ = graph_overlay(latency_csgraph(graph), devices)
    sources = np.repeat(np.arange(devices), np.diff(indptr))
    bound = overlay_bounds(latency_csgraph(graph), devices, indptr, indices)
    fast = pair_transfer_s(graph, sources, indices, nbytes, bound)
    exact = np.array([net.transfer_s(int(s), np.array([t]), nbytes)[0] for s, t in zip(sources, indices, strict=True)])
    assert np.allclose(fast, exact, rtol=1e-12)
    matrix = device_transfer_matrix(graph, devices, nbytes)
    full = np.stack([net.transfer_s(d, np.arange(devices), nbytes) for d in range(devices)])
    assert np.allclose(matrix, full, rtol=1e-6)


def test_pair_times_follow_the_shortest_path_and_its_bottleneck():
    """Random 1-100 ms links break the triangle inequality: neighbours may talk faster over a detour."""
    graph = build_topology("random_links", 50, seed=3)
    rng = np.random.default_rng(0)
    for u, v in graph.edges():
        graph[u][v]["bandwidth_bps"] = float(rng.choice([1e6, 1e7, 1e8]))
    _check_pair_times(graph, 50, 26_000)
    _check_pair_times(build_topology("edge_cloud", 60, seed=1, edge_servers=4), 60, 26_000)


# -- the protocol -----------------------------------------------------------
@pytest.mark.parametrize(("overlay", "merge"), [("graph", "average"), ("random", "age")])
def test_runs_are_deterministic_and_well_formed(digits, overlay, merge):
    graph = build_topology("random_geometric", 30, seed=2)
    parts = _iid(digits, 30)
    parts[0] = parts[0][:5]  # unequal sizes make ages differ
    workload = _workload(digits, parts, graph, rounds=4)

    def records():
        protocol = make_protocol("gossip", "g", {"overlay": overlay, "merge": merge, "eval_devices": 8, "voted": True})
        return list(run_protocol(protocol, workload, rounds=4, eval_every=2)), protocol

    first, protocol = records()
    second, _ = records()
    assert first == second
    # late_pushes: pushes merged more than one cycle after they were sent (asynchronous timing)
    metrics = {r.metric for r in first} - {"late_pushes"}
    assert metrics == {"accuracy", "accuracy_std", "loss", "voted_accuracy", "validation_accuracy", "late_fraction"}
    stack = protocol.evaluation_models()
    assert stack["1.weight"].shape == (8, 10, 64)
    assert protocol.structure()["evaluated_devices"] == sorted(set(protocol.structure()["evaluated_devices"]))
    last = next(r for r in first if r.round == 4)
    assert last.bytes_sent == 4 * 30 * workload.message_bytes  # one push per device per cycle
    assert last.sim_time_s > 0


def test_a_cycle_of_five_thousand_devices_is_batched(digits):
    """No Python loop over devices or messages: a 5,000-device cycle takes seconds."""
    graph = build_topology("random_geometric", 5000, seed=1)
    rng = np.random.default_rng(1)
    parts = [rng.choice(len(digits[1]), 3, replace=False) for _ in range(5000)]
    workload = _workload(digits, parts, graph, rounds=1)
    protocol = make_protocol("gossip", "g", {})
    records = list(run_protocol(protocol, workload, rounds=1, eval_every=1))
    assert protocol.evaluation_models()["1.weight"].shape[0] == 256
    assert all(np.isfinite(r.value) for r in records)


def test_iid_gossip_learns_close_to_fedavg(digits):
    """Measured (seeds 1-3, 15 rounds): FedAvg 0.92-0.93; gossip device mean 0.84-0.86 (graph
    overlay), 0.86-0.87 (random), majority vote of the devices 0.92-0.93; local-only 0.75."""
    workload = _workload(digits, _iid(digits, 20), build_topology("random_geometric", 20, seed=1))
    fedavg = _final(make_protocol("fedavg", "f", {}), workload, 15)
    gossip = _final(make_protocol("gossip", "g", {"voted": True}), workload, 15)
    assert fedavg["accuracy"] > 0.85
    assert gossip["accuracy"] > 0.7
    assert fedavg["accuracy"] - gossip["accuracy"] < 0.15
    assert abs(gossip["voted_accuracy"] - fedavg["accuracy"]) < 0.05


def test_non_iid_gossip_falls_behind_fedavg(digits):
    """Measured (1-2 classes per device, 15 rounds): FedAvg 0.87; gossip device mean 0.13 (each
    device model has just trained on its own class), majority vote 0.50-0.60."""
    workload = _workload(digits, _label_sorted(digits, 20), build_topology("random_geometric", 20, seed=1))
    fedavg = _final(make_protocol("fedavg", "f", {}), workload, 15)
    gossip = _final(make_protocol("gossip", "g", {"voted": True}), workload, 15)
    assert fedavg["accuracy"] > 0.7
    assert gossip["voted_accuracy"] > 0.3  # well above chance (0.1)
    assert fedavg["accuracy"] - gossip["accuracy"] > 0.3
    assert fedavg["accuracy"] > gossip["voted_accuracy"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"overlay": "ring"}, "overlay"),
        ({"merge": "sum"}, "merge"),
        ({"eval_devices": 0}, "eval_devices"),
        ({"voted": 1}, "voted"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ProtocolError, match=rf"protocols\.g\.{field}"):
        make_protocol("gossip", "g", options)
