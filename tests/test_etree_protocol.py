"""The E-Tree tree and protocol: structure invariants, FedAvg equivalence, public nodes, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import label_sharded_workload

from etree.core.errors import ProtocolError
from etree.engine.loop import run_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.protocols import make_protocol
from etree.trees.hierarchical import TreeProtocol
from etree.trees.kma_tree import build_etree_tree
from etree.trees.tree import AggregationTree
from topologies import build_topology, delay_matrix

QUICK = {"pretrain_epochs": 1, "public_samples": 200}


def make_workload(devices: int = 24, seed: int = 0, *, kind: str = "random_links", lr: float = 0.05) -> Workload:
    """Digits split by label into contiguous shards (1-2 classes per device), on a small graph."""
    return label_sharded_workload(devices, seed, graph=build_topology(kind, devices, seed=seed), lr=lr)


def _records(protocol, workload, rounds=3):
    return list(run_protocol(protocol, workload, rounds=rounds, eval_every=1))


# -- structure ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("groups", [[4, 1], [6, 3, 1], [5, 2, 2, 1]])
def test_every_device_has_one_path_of_heads_to_the_root(seed, groups):
    net = NetworkModel(build_topology("random_links", 40, seed=seed))
    accuracy = np.random.default_rng(seed).uniform(0.3, 0.9, 40)
    tree = build_etree_tree(net, 40, groups, accuracy=accuracy, rng=np.random.default_rng(seed)).tree
    assert tree.depth == len(groups) and [len(h) for h in tree.heads] == groups
    for device in range(40):
        index, path = int(tree.parents[0][device]), [device]
        for level in range(tree.depth):
            head = int(tree.heads[level][index])
            path.append(head)
            if level + 1 < tree.depth:
                index = int(tree.parents[level + 1][index])
        assert path[-1] == tree.root and index == 0
    for level in range(tree.depth):  # each head is a member of the cluster it heads
        below = np.arange(40) if level == 0 else tree.heads[level - 1]
        for k, head in enumerate(tree.heads[level]):
            assert head in below[tree.parents[level] == k]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("clustering", ["kma", "kmedoids"])
def test_every_head_is_the_delay_medoid_of_its_cluster(seed, clustering):
    net = NetworkModel(build_topology("random_links", 36, seed=seed))
    accuracy = np.random.default_rng(seed).uniform(0.3, 0.9, 36)
    tree = build_etree_tree(
        net, 36, [6, 2, 1], accuracy=accuracy, clustering=clustering, rng=np.random.default_rng(seed)
    ).tree
    full = delay_matrix(net.graph)
    for level in range(tree.depth):
        below = np.arange(36) if level == 0 else tree.heads[level - 1]
        for k, head in enumerate(tree.heads[level]):
            members = below[tree.parents[level] == k]
            best = full[np.ix_(members, members)].sum(0).min()
            assert full[head, members].sum() <= best + 1e-9  # Eq. 1 (integer-ms latencies may tie)


def test_structure_describes_tree_clusters_and_kma():
    workload = make_workload()
    protocol = make_protocol("etree", "e", {"groups": [4, 1], "public_nodes": True, "gamma": 0.2, **QUICK})
    protocol.setup(workload)
    structure = protocol.structure()
    assert structure is not None
    json.dumps(structure)  # JSON-ready
    layer1 = structure["layers"][0]["clusters"]
    assert len(layer1) == 4 and structure["devices"] == 24
    public = structure["public_nodes"]
    total = int(workload.data.counts.sum())
    extra = sum(int(workload.data.counts[p]) for p in public) * 3  # a public node counts in the 3 other clusters
    assert sum(sum(c["label_histogram"]) for c in layer1) == total + extra
    assert all(c["mean_delay_s"] >= 0 and "mean_pretrain_accuracy" in c for c in layer1)
    assert set(structure["public_homes"]) == {str(p) for p in public}
    stats = structure["clustering"]
    assert stats["method"] == "kma" and stats["delta"] == 0.09 and stats["iterations"] >= 1
    assert 0 <= stats["global_mean_accuracy"] <= 1 and stats["ratios"] == [1, 5]


# -- numerics -------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 3])
def test_one_layer_tree_is_unweighted_fedavg(seed):
    workload = make_workload(seed=seed)
    tree = make_protocol("etree", "e", {"groups": [1], "ratios": [1], **QUICK})
    fedavg = make_protocol("fedavg", "f", {"server_trains": True})  # E-Tree's root trains, as every head does
    for protocol in (tree, fedavg):
        protocol.setup(workload)
        for r in range(1, 4):
            protocol.run_round(r)
    for name in fedavg.params:  # type: ignore[attr-defined]
        diff = (tree.params[name] - fedavg.params[name]).abs().max()  # type: ignore[attr-defined]
        assert float(diff) < 1e-6


def _hand_tree(public: list[int]) -> AggregationTree:
    # 12 devices, 3 clusters of 4 (heads 0, 4, 8), root 4
    parents = np.repeat(np.arange(3), 4)
    return AggregationTree(
        heads=(np.array([0, 4, 8]), np.array([4])),
        parents=(parents, np.zeros(3, dtype=np.int64)),
        public=np.array(public, dtype=np.int64),
    )


def _hand_protocol(public, merge="mean", ratios=(1, 2)) -> tuple[TreeProtocol, Workload]:
    workload = make_workload(12, kind="random_links", lr=1e-12)  # lr ~ 0: training leaves models as set
    protocol = TreeProtocol("hand", lambda w, n: _hand_tree(public), ratios=list(ratios), public_merge=merge)
    protocol.setup(workload)
    protocol.params = {
        name: torch.arange(12, dtype=torch.float32).view(-1, *[1] * t.dim()).expand(-1, *t.shape).clone()
        for name, t in workload.initial.items()
    }  # device d holds the constant d
    return protocol, workload


def test_identical_models_aggregate_to_themselves():
    protocol, workload = _hand_protocol([2, 9])
    model = {
        name: torch.randn(t.shape, generator=torch.Generator().manual_seed(1)) for name, t in workload.initial.items()
    }
    protocol.params = {name: t.unsqueeze(0).repeat(12, *[1] * t.dim()) for name, t in model.items()}
    for level in protocol._aggregate(torch.arange(12), 2):
        for name, tensor in level.items():
            assert torch.allclose(tensor, model[name].expand_as(tensor), atol=1e-6)


def test_public_node_model_enters_every_cluster_mean():
    protocol, _ = _hand_protocol([2])
    clusters = protocol._aggregate(torch.arange(12), 1)[0]
    value = clusters["1.weight"][:, 0, 0]
    # cluster 0 = {0,1,2,3}; clusters 1 and 2 also average device 2's model
    assert torch.allclose(value, torch.tensor([1.5, (4 + 5 + 6 + 7 + 2) / 5, (8 + 9 + 10 + 11 + 2) / 5]))


@pytest.mark.parametrize("merge", ["mean", "home"])
def test_public_node_takes_the_mean_of_cluster_models_and_messages_count(merge):
    protocol, workload = _hand_protocol([2], merge)
    cost = protocol.run_round(1)  # ratios [1, 2]: round 1 is a cluster-only round
    got = protocol.params["1.weight"][:, 0, 0]
    cluster = torch.tensor([1.5, 24 / 5, 40 / 5])
    expected = cluster.repeat_interleave(4)
    expected[2] = cluster.mean() if merge == "mean" else cluster[0]
    assert torch.allclose(got, expected, atol=1e-4)
    plain, _ = _hand_protocol([], merge)
    base = plain.run_round(1)
    extra = 2 + (2 if merge == "mean" else 0)  # up to the 2 other heads (+ down from them)
    assert cost.messages == base.messages + extra
    assert cost.bytes_sent == base.bytes_sent + extra * workload.message_bytes
    assert cost.duration_s >= base.duration_s
    root = protocol.run_round(2)  # root round: every device, public or not, gets the root model
    assert root.events == {"root_aggregations": 1.0}
    assert torch.allclose(protocol.params["1.weight"], protocol.params["1.weight"][:1].expand(12, -1, -1))


def test_root_aggregations_are_counted():
    workload = make_workload()
    protocol = make_protocol("etree", "e", {"groups": [3, 1], "ratios": [1, 2], "clustering": "kmedoids"})
    records = list(run_protocol(protocol, workload, rounds=5, eval_every=5))
    last = {r.metric: r.value for r in records if r.round == 5}
    assert last["root_aggregations"] == 2.0 and records[-1].bytes_sent > 0


@pytest.mark.parametrize("seed", [0, 5])
def test_same_seed_gives_identical_structure_and_metrics(seed):
    options = {"groups": [4, 1], "ratios": [1, 2], "public_nodes": True, "gamma": 0.2, **QUICK}
    runs = []
    for _ in range(2):
        protocol = make_protocol("etree", "e", dict(options))
        records = _records(protocol, make_workload(seed=seed))
        runs.append((json.dumps(protocol.structure(), sort_keys=True), records))
    assert runs[0] == runs[1]


# -- options ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"groups": [2, 3, 1]}, "groups"),
        ({"groups": [4, 2]}, "groups"),
        ({"groups": []}, "groups"),
        ({"groups": [4, 0, 1]}, "groups"),
        ({"groups": "8,1"}, "groups"),
        ({"groups": [4, 2, 1]}, "ratios"),
        ({"ratios": [1, 0]}, "ratios"),
        ({"clustering": "kmeans"}, "clustering"),
        ({"delta": -0.1}, "delta"),
        ({"pretrain_epochs": 0}, "pretrain_epochs"),
        ({"public_samples": 0}, "public_samples"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"public_nodes": "yes"}, "public_nodes"),
        ({"gamma": 0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"public_merge": "max"}, "public_merge"),
        ({"weighted": 1}, "weighted"),
        ({"participation": 0}, "participation"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ProtocolError, match=rf"protocols\.lab\.{field}"):
        make_protocol("etree", "lab", options)


def test_more_clusters_than_devices_fails_at_setup():
    protocol = make_protocol("etree", "lab", {"groups": [30, 1], "clustering": "kmedoids"})
    with pytest.raises(ProtocolError, match=r"protocols\.lab\.groups"):
        protocol.setup(make_workload(12))
