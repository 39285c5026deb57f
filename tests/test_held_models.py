"""Metrics score what devices hold: the mean over devices of the model each holds at that moment.

Every check recomputes the held metric by brute force, each device's own row of the model stack
evaluated alone, so a protocol that reported another model (the one its root would hold, a mean of
cluster models) would fail it. Also: time to target comes from held models only, FedAvg's server
does not train, and gossip runs its faithful defaults.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import label_sharded_workload, tiny_spec_with

import etree
from clients.classification.evaluation import evaluate_models
from clients.params import replicate
from etree.engine.loop import run_protocol
from etree.engine.protocol import Protocol
from etree.engine.workload import Workload
from etree.protocols import make_protocol
from etree.trees.hierarchical import TreeProtocol
from etree.trees.tree import AggregationTree
from experiments.metrics_file import first_reaching
from topologies import build_topology

QUICK = {"pretrain_epochs": 1, "public_samples": 200}


def _workload(devices: int = 24, seed: int = 0, kind: str = "random_links") -> Workload:
    return label_sharded_workload(devices, seed, graph=build_topology(kind, devices, seed=seed))


def _brute_force(workload: Workload, rows: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean over devices of the test and validation accuracy of each device's own row."""
    test, _ = evaluate_models(workload.model, rows, workload.x_test, workload.y_test)
    validation, _ = evaluate_models(workload.model, rows, workload.x_val, workload.y_val)
    return float(test.mean()), float(validation.mean())


def _assert_held(protocol: Protocol, workload: Workload, rows: dict[str, torch.Tensor]) -> dict[str, float]:
    metrics = protocol.evaluate(workload)
    test, validation = _brute_force(workload, rows)
    assert metrics["accuracy"] == pytest.approx(test, abs=1e-6)
    assert metrics["validation_accuracy"] == pytest.approx(validation, abs=1e-6)
    return metrics


def test_etree_scores_cluster_models_between_root_aggregations_and_the_root_model_after():
    workload = _workload()
    protocol = make_protocol("etree", "e", {"groups": [4, 1], "ratios": [1, 3], **QUICK})
    protocol.setup(workload)
    params = protocol.params  # type: ignore[attr-defined]
    _assert_held(protocol, workload, params)  # round 0: everyone holds the initial model
    for round_index in range(1, 7):
        protocol.run_round(round_index)
        params = protocol.params  # type: ignore[attr-defined]
        metrics = _assert_held(protocol, workload, params)
        distinct = protocol.evaluation_models()["1.weight"]
        if round_index % 3:  # a cluster round: each device holds its cluster's model
            assert len(distinct) == 4 and int(protocol.holders().sum()) == workload.devices
            assert metrics["root_accuracy"] != pytest.approx(metrics["accuracy"], abs=1e-3)
        else:  # right after a root aggregation every device holds the global model
            assert len(distinct) == 1
            assert metrics["root_accuracy"] == metrics["accuracy"]
            assert metrics["accuracy_std"] == 0.0


@pytest.mark.parametrize("merge", ["mean", "home"])
def test_public_nodes_are_scored_on_the_model_they_hold(merge):
    workload = _workload(12)
    tree = AggregationTree(
        heads=(np.array([0, 4, 8]), np.array([4])),
        parents=(np.repeat(np.arange(3), 4), np.zeros(3, dtype=np.int64)),
        public=np.array([2, 9]),
    )
    protocol = TreeProtocol("hand", lambda w, n: tree, ratios=[1, 2], public_merge=merge)
    protocol.setup(workload)
    protocol.run_round(1)  # a cluster round: public nodes take the mean of the cluster models, or their home's
    _assert_held(protocol, workload, protocol.params)
    assert len(protocol.evaluation_models()["1.weight"]) == (4 if merge == "mean" else 3)


def test_rounds_without_aggregation_score_every_device_s_own_model():
    workload = _workload(kind="random_geometric")
    protocol = make_protocol("hierfavg", "h", {"kappa1": 2, "kappa2": 1, "edge_servers": 3})
    protocol.setup(workload)
    protocol.run_round(1)  # local epochs only: nobody aggregated
    _assert_held(protocol, workload, protocol.params)  # type: ignore[attr-defined]
    assert len(protocol.evaluation_models()["1.weight"]) == workload.devices


def test_grouped_weighs_each_cluster_model_by_its_devices():
    workload = _workload()
    protocol = make_protocol("grouped", "g", {"groups": [4, 1], **QUICK})
    protocol.setup(workload)
    protocol.run_round(1)
    metrics = _assert_held(protocol, workload, protocol.params)  # type: ignore[attr-defined]
    assert "root_accuracy" not in metrics  # its root never aggregates
    sizes = np.bincount(protocol.tree.parents[0])  # type: ignore[attr-defined]
    assert sizes.min() != sizes.max()  # unequal clusters, so the mean over devices is not the mean over clusters


@pytest.mark.parametrize("name", ["gossip", "individual"])
def test_decentralised_protocols_score_each_evaluated_device_s_own_model(name):
    workload = _workload()
    protocol = make_protocol(name, name, {"eval_devices": 10})
    list(run_protocol(protocol, workload, rounds=2, eval_every=2))
    evaluated = protocol.evaluated  # type: ignore[attr-defined]
    rows = {k: v[evaluated] for k, v in protocol.params.items()}  # type: ignore[attr-defined]
    _assert_held(protocol, workload, rows)


def test_time_to_target_comes_from_the_models_devices_hold():
    """E-Tree with a root aggregation every 5 rounds: the root's would-be model reaches the target
    rounds before any device holds such a model, and the summary counts the latter."""
    spec = tiny_spec_with(
        rounds=10,
        eval_every=1,
        topology={"devices": 20},
        protocols=[{"name": "etree", "groups": [4, 1], "ratios": [1, 5], "pretrain_epochs": 1}],
    )
    result = etree.run(spec, out=None)
    curves = result.series()["etree"]
    held, root = curves["accuracy"], curves["root_accuracy"]
    target = 0.9 * float(held.values[-1])
    hit, early = first_reaching(held, target), first_reaching(root, target)
    assert hit is not None and early is not None and early < hit  # the case where the two rules disagree
    row = next(line for line in result.summary().splitlines() if line.startswith("| etree |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3] == str(int(held.rounds[hit]))  # rounds to target
    assert float(cells[4]) == pytest.approx(float(held.sim_time_s[hit]), rel=1e-2)  # sim time to target


# -- FedAvg's server -----------------------------------------------------------------
def _one_round(options: dict[str, Any], workload: Workload) -> TreeProtocol:
    protocol = make_protocol("fedavg", "f", options)
    assert isinstance(protocol, TreeProtocol)
    protocol.setup(workload)
    protocol.run_round(1)
    return protocol


def _mean_of_trained(workload: Workload, devices: np.ndarray) -> dict[str, torch.Tensor]:
    ids = torch.from_numpy(devices)
    trained = workload.train_devices(replicate(workload.initial, len(ids)), ids, 1)
    return {name: tensor.mean(0) for name, tensor in trained.items()}


def test_fedavg_s_server_device_neither_trains_nor_joins_the_average():
    workload = _workload(12, kind="random_geometric")
    protocol = _one_round({}, workload)
    server = protocol.tree.root
    assert server < workload.devices  # no cloud node: the server is a device
    clients = np.setdiff1d(np.arange(workload.devices), [server])
    assert "root_accuracy" not in protocol.evaluate(workload)  # its root aggregates every round: no other model
    for name, expected in _mean_of_trained(workload, clients).items():
        assert torch.allclose(protocol.params[name], expected.expand_as(protocol.params[name]), atol=1e-6)
    trains = _one_round({"server_trains": True}, workload)  # the option lets it train and count
    for name, expected in _mean_of_trained(workload, np.arange(workload.devices)).items():
        assert torch.allclose(trains.params[name][0], expected, atol=1e-6)
        assert not torch.allclose(trains.params[name][0], protocol.params[name][0], atol=1e-6)


def test_a_cloud_server_changes_nothing_every_device_trains():
    graph = build_topology("edge_cloud", 12, seed=3, edge_servers=2)
    workload = label_sharded_workload(12, 0, graph=graph)
    protocol = _one_round({}, workload)
    assert protocol.tree.root >= workload.devices  # the cloud node is no device
    for name, expected in _mean_of_trained(workload, np.arange(workload.devices)).items():
        assert torch.allclose(protocol.params[name][0], expected, atol=1e-6)


def test_a_sampled_round_never_picks_the_idle_server():
    workload = _workload(12, kind="random_geometric")
    protocol = make_protocol("fedavg", "f", {"participation": 0.5})
    assert isinstance(protocol, TreeProtocol)
    protocol.setup(workload)
    server = protocol.tree.root
    for round_index in range(1, 20):
        chosen = protocol._participants(round_index).numpy()
        assert server not in chosen and len(chosen) == round(0.5 * (workload.devices - 1))


# -- gossip's defaults -----------------------------------------------------------------
def test_gossip_defaults_to_random_peer_sampling_and_reports_its_vote_and_late_pushes():
    workload = _workload()
    protocol = make_protocol("gossip", "g", {})
    records = list(run_protocol(protocol, workload, rounds=3, eval_every=3))
    assert protocol.structure()["overlay"] == "random"
    final = {r.metric: r.value for r in records if r.round == 3}
    assert 0 <= final["voted_accuracy"] <= 1 and 0 <= final["late_fraction"] < 1
    assert final["late_fraction"] == pytest.approx(final.get("late_pushes", 0.0) / (3 * workload.devices))
