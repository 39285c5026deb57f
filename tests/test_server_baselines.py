"""Server optimizers at the root (FedAvgM, FedAdam, FedYogi, FedAdagrad), D-PSGD and IFCA, each
pinned to its definition: the degenerate settings equal FedAvg, one optimizer step equals a hand
computation, D-PSGD's mixing matrix is doubly stochastic, IFCA's devices pick the lowest-loss
model, and every one of them resumes from a checkpoint exactly."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import Digits, softmax_workload, tiny_spec_with

from clients.params import replicate
from etree.core.errors import EtreeError, ProtocolError
from etree.engine.checkpoint import RunSnapshot, pack_state, unpack_state
from etree.engine.loop import prepare_protocol, run_protocol
from etree.engine.protocol import Protocol, Record
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.protocols import make_protocol
from etree.protocols.dpsgd import DPSGDProtocol, complete_overlay, metropolis_hastings, topology_overlay
from etree.protocols.ifca import IFCAProtocol
from etree.trees.hierarchical import TreeProtocol
from etree.trees.server_opt import ServerOptimizer, initial_state, server_optimizer, server_step
from experiments.runner import build_workload
from experiments.spec import spec_from_dict
from topologies import build_topology

ROUNDS = 4


def _workload(digits: Digits, devices: int = 12, *, lr: float = 0.05, seed: int = 1) -> Workload:
    """Digits split IID over a small random geometric fleet (softmax regression, batch 4)."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(digits[1])), devices)
    return softmax_workload(digits, parts, build_topology("random_geometric", devices, seed=seed), lr=lr, seed=seed)


def _trained(name: str, options: dict[str, Any], workload: Workload, rounds: int = ROUNDS) -> Protocol:
    protocol = make_protocol(name, name, dict(options))
    prepare_protocol(protocol, workload)
    for round_index in range(1, rounds + 1):
        protocol.run_round(round_index)
    return protocol


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -- server optimizers -----------------------------------------------------------
def test_fedavgm_without_momentum_at_unit_lr_is_fedavg(digits: Digits) -> None:
    plain = _trained("fedavg", {}, _workload(digits))
    avgm = _trained("fedavg", {"server_opt": "avgm", "server_momentum": 0.0, "server_lr": 1.0}, _workload(digits))
    assert isinstance(plain, TreeProtocol) and isinstance(avgm, TreeProtocol)
    assert _max_diff(plain.params, avgm.params) <= 1e-6


def _opt(kind: str, **options: float) -> ServerOptimizer:
    opt = server_optimizer("fedavg", kind, **options)
    assert opt is not None
    return opt


X0, AGG1, AGG2 = [1.0, -2.0], [1.5, -2.25], [1.25, -2.5]  # a 2-parameter model and two aggregates


def _two_steps(opt: ServerOptimizer) -> list[list[float]]:
    """The root's model after each of two steps, from ``X0`` toward ``AGG1`` then ``AGG2``."""
    state = initial_state(opt, {"w": torch.tensor([X0], dtype=torch.float64)})
    out = []
    for aggregate in (AGG1, AGG2):
        state = server_step(opt, state, {"w": torch.tensor([aggregate], dtype=torch.float64)})
        out.append(state.model["w"][0].tolist())
    return out


def _hand(kind: str, lr: float, beta1: float, beta2: float, tau: float, momentum: float = 0.0) -> list[list[float]]:
    """The same two steps written out per coordinate with Python floats (Flower 1.41's formulas)."""
    out, x, m, v = [], list(X0), [0.0, 0.0], [0.0, 0.0]
    for t, aggregate in enumerate((AGG1, AGG2), start=1):
        for i in range(2):
            delta = aggregate[i] - x[i]
            if kind == "avgm":  # m = beta m + (x - aggregate); x = x - lr m
                m[i] = momentum * m[i] - delta
                x[i] = x[i] - lr * m[i]
                continue
            m[i] = beta1 * m[i] + (1 - beta1) * delta
            if kind == "adam":
                v[i] = beta2 * v[i] + (1 - beta2) * delta * delta
                eta = lr * math.sqrt(1 - beta2 ** (t + 1)) / (1 - beta1 ** (t + 1))
            elif kind == "yogi":
                v[i] = v[i] - (1 - beta2) * delta * delta * math.copysign(1.0, v[i] - delta * delta)
                eta = lr
            else:
                v[i] = v[i] + delta * delta
                eta = lr
            x[i] = x[i] + eta * m[i] / (math.sqrt(v[i]) + tau)
        out.append(list(x))
    return out


@pytest.mark.parametrize(
    ("kind", "hand"),
    [
        ("adam", {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
        ("yogi", {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
        ("adagrad", {"lr": 0.1, "beta1": 0.0, "beta2": 0.0, "tau": 1e-3}),
        ("avgm", {"lr": 1.0, "beta1": 0.0, "beta2": 0.0, "tau": 0.0, "momentum": 0.9}),
    ],
)
def test_one_server_step_is_the_hand_computation(kind: str, hand: dict[str, float]) -> None:
    """The defaults (Flower 1.41's; FedAvgM's momentum 0.9) step a 2-parameter model as written out."""
    got = _two_steps(_opt(kind))
    assert np.allclose(got, _hand(kind, **hand), rtol=0, atol=1e-12)


def test_fedadam_first_step_in_numbers() -> None:
    """FedAdam from 1.0 toward 1.5: m = 0.05, v = 0.0025, eta = 0.1 sqrt(1 - 0.99^2) / (1 - 0.9^2)."""
    first = _two_steps(_opt("adam"))[0][0]
    assert first == pytest.approx(1.0 + 0.1 * math.sqrt(0.0199) / 0.19 * 0.05 / 0.051, abs=1e-12)
    assert first == pytest.approx(1.0727901, abs=1e-6)


def test_server_opt_on_etree_steps_at_root_aggregations_only(digits: Digits) -> None:
    """E-Tree with two layers, the root every 2 rounds: round 1 (clusters only) is untouched by the
    optimizer; round 2's push is FedAdam's step from the initial model toward the root's average."""
    options = {"groups": [3, 1], "ratios": [1, 2], "clustering": "kmedoids"}
    plain = make_protocol("etree", "etree", dict(options))
    adam = make_protocol("etree", "etree", {**options, "server_opt": "adam"})
    assert isinstance(plain, TreeProtocol) and isinstance(adam, TreeProtocol)
    for protocol in (plain, adam):
        prepare_protocol(protocol, _workload(digits))
    initial = {k: v[:1].clone() for k, v in adam.params.items()}
    for protocol in (plain, adam):
        protocol.run_round(1)
    assert all(torch.equal(plain.params[k], adam.params[k]) for k in plain.params)
    assert adam._opt_state is not None and adam._opt_state.steps == 0
    cost = adam.run_round(2)
    plain.run_round(2)
    assert cost.events == {"root_aggregations": 1.0} and adam._opt_state.steps == 1
    aggregate = {k: v[:1] for k, v in plain.params.items()}  # without it, every device holds the average
    expected = server_step(_opt("adam"), initial_state(_opt("adam"), initial), aggregate).model
    assert all(torch.allclose(adam.params[k], expected[k].expand_as(adam.params[k]), atol=1e-7) for k in expected)
    assert _max_diff(adam.params, plain.params) > 1e-3
    adam.run_round(3)  # clusters only again: the root keeps its step count and reports its would-be step
    assert adam._opt_state.steps == 1
    assert "root_accuracy" in adam.evaluate(adam.workload)


@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("fedavg", {"server_lr": 0.5}, "server_lr: got 0.5; it sets a server optimizer and server_opt is 'none'"),
        ("fedavg", {"server_opt": "avgm", "beta2": 0.9}, "beta2: got 0.9; only server_opt = 'adam' or 'yogi'"),
        ("fedavg", {"server_opt": "adam", "tau": 0.0}, "tau: got 0.0; must be > 0"),
        ("hierfavg", {"server_opt": "sgd"}, "server_opt: got 'sgd'; choose one of: none, avgm"),
        ("grouped", {"server_opt": "adam"}, "grouped's top layer never aggregates"),
        ("dpsgd", {"overlay": "ring"}, "overlay: got 'ring'"),
        ("ifca", {"clusters": 0}, "clusters: got 0; must be an integer >= 1"),
    ],
)
def test_bad_options_are_refused_naming_the_field(name: str, options: dict[str, Any], says: str) -> None:
    with pytest.raises(EtreeError, match="protocols") as error:
        make_protocol(name, name, options)
    assert says in str(error.value)


# -- D-PSGD ------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", ["topology", "complete"])
def test_metropolis_hastings_weights_are_doubly_stochastic(overlay: str) -> None:
    graph = build_topology("random_geometric", 40, seed=4)
    indptr, indices = complete_overlay(40) if overlay == "complete" else topology_overlay(graph, 40, "dpsgd")[:2]
    weights, own = metropolis_hastings(indptr, indices)
    matrix = np.zeros((40, 40))
    matrix[np.repeat(np.arange(40), np.diff(indptr)), indices] = weights
    matrix[np.diag_indices(40)] = own
    assert (matrix >= 0).all() and np.allclose(matrix, matrix.T)
    assert np.allclose(matrix.sum(0), 1) and np.allclose(matrix.sum(1), 1)
    if overlay == "complete":
        assert np.allclose(matrix, 1 / 40)


def test_dpsgd_on_the_complete_graph_is_fedavg(digits: Digits) -> None:
    """W = J / D: every device ends each round with the mean of the trained models, as FedAvg's
    devices do when every device (the server too) trains."""
    fedavg = _trained("fedavg", {"server_trains": True}, _workload(digits))
    dpsgd = _trained("dpsgd", {"overlay": "complete"}, _workload(digits))
    assert isinstance(fedavg, TreeProtocol)
    assert isinstance(dpsgd, DPSGDProtocol)
    assert _max_diff(fedavg.params, dpsgd.params) <= 1e-6


@pytest.mark.parametrize("order", ["train_then_mix", "concurrent"])
def test_dpsgd_round_keeps_the_mean_and_is_timed_per_neighbour(order: str, digits: Digits) -> None:
    """On the topology overlay: a doubly stochastic W keeps the devices' mean model, so after one round
    from a common start it is the mean of the trained models (either order); every edge carries two
    models; the round lasts until the slowest device has every neighbour's model (an oracle on
    ``NetworkModel``'s full Dijkstra rows, not the protocol's bounded pair search)."""
    workload = _workload(digits)
    protocol = make_protocol("dpsgd", "dpsgd", {"order": order})
    assert isinstance(protocol, DPSGDProtocol)
    prepare_protocol(protocol, workload)
    cost = protocol.run_round(1)
    trained = workload.train_devices(replicate(workload.initial, 12), torch.arange(12), 1)
    assert (
        _max_diff({k: v.mean(0) for k, v in protocol.params.items()}, {k: v.mean(0) for k, v in trained.items()}) < 1e-6
    )
    # concurrent: the round's starting models are all alike, so each device holds just its own update
    assert (_max_diff(protocol.params, trained) < 1e-6) == (order == "concurrent")
    edges = workload.graph.subgraph(range(12)).number_of_edges()
    assert cost.messages == 2 * edges and cost.bytes_sent == 2 * edges * workload.wire_bytes
    network = NetworkModel(workload.graph)
    compute = network.compute_s(np.arange(12), workload.epoch_flops)
    done = []
    for i in range(12):
        neighbours = np.array(sorted(workload.graph.subgraph(range(12)).neighbors(i)))
        sent = compute[neighbours] if order == "train_then_mix" else 0.0
        done.append(max(compute[i], float((sent + network.transfer_s(i, neighbours, workload.wire_bytes)).max())))
    assert cost.duration_s == pytest.approx(max(done), rel=1e-12)


def test_dpsgd_refuses_a_disconnected_overlay() -> None:
    graph = build_topology("edge_cloud", 30, seed=2, edge_servers=3)
    with pytest.raises(ProtocolError, match="use overlay = 'complete'"):
        topology_overlay(graph, 30, "dpsgd")


# -- IFCA --------------------------------------------------------------------------
def _records(name: str, options: dict[str, Any], workload: Workload) -> list[Record]:
    return list(run_protocol(make_protocol(name, name, dict(options)), workload, rounds=ROUNDS, eval_every=1))


def test_ifca_with_one_cluster_is_fedavg(digits: Digits) -> None:
    """Same participants, same training, same average, same timing and bytes: every record equal."""
    options = {"participation": 0.5, "weighted": True}
    fedavg = _records("fedavg", options, _workload(digits))
    ifca = [r for r in _records("ifca", {**options, "clusters": 1}, _workload(digits)) if r.metric != "clusters_held"]
    assert [dataclass_row(r) for r in ifca] == [dataclass_row(r) for r in fedavg]


def dataclass_row(record: Record) -> tuple[Any, ...]:
    return (record.round, record.sim_time_s, record.bytes_sent, record.metric, record.value)


def test_ifca_devices_pick_the_lowest_loss_model(digits: Digits) -> None:
    """Devices holding only 0s or only 1s, three models each sure of one class (0, 1, 9): each device
    picks the model of its class, trains from it, and the model nobody picked stays as it was."""
    y = digits[1]
    zeros, ones = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    parts = [zeros[:20], ones[:20], zeros[20:40], ones[20:40]]
    workload = softmax_workload(digits, parts, build_topology("random_geometric", 4, seed=1))
    protocol = make_protocol("ifca", "ifca", {"clusters": 3, "server_trains": True})
    assert isinstance(protocol, IFCAProtocol)
    prepare_protocol(protocol, workload)
    sure = {name: torch.zeros(3, *t.shape) for name, t in workload.initial.items()}
    for k, label in enumerate((0, 1, 9)):
        sure["1.bias"][k, label] = 5.0
    protocol.models = {name: t.clone() for name, t in sure.items()}
    protocol.run_round(1)
    assert protocol.choice.tolist() == [0, 1, 0, 1]
    assert protocol.holders().tolist() == [2, 2, 0]
    assert all(torch.equal(protocol.models[k][2], sure[k][2]) for k in sure)
    assert all(not torch.equal(protocol.models[k][:2], sure[k][:2]) for k in sure)


# -- checkpoints -------------------------------------------------------------------
RESUMED: list[tuple[str, dict[str, Any]]] = [
    ("dpsgd", {}),
    ("dpsgd", {"overlay": "complete", "order": "concurrent"}),
    ("ifca", {"clusters": 3, "participation": 0.5}),
    ("fedavg", {"server_opt": "adam", "participation": 0.5}),
    ("etree", {"groups": [3, 1], "ratios": [1, 2], "clustering": "kmedoids", "server_opt": "avgm"}),
]
SPEC = tiny_spec_with(
    name="resume",
    seed=5,
    rounds=6,
    eval_every=1,
    topology={"devices": 16},
    network={"dropout": 0.2, "crash": [{"at_s": 0.05, "node": 3}]},
)


def _run(
    name: str, options: dict[str, Any], resume: RunSnapshot | None = None
) -> tuple[list[Record], list[RunSnapshot], Protocol]:
    workload, _, _ = build_workload(spec_from_dict({**SPEC, "protocols": [{"name": name, **options}]}))
    protocol = make_protocol(name, name, dict(options))
    snapshots: list[RunSnapshot] = []
    records = list(
        run_protocol(
            protocol,
            workload,
            rounds=6,
            eval_every=1,
            resume=resume,
            checkpoint_every=2,
            on_checkpoint=snapshots.append,
        )
    )
    return records, snapshots, protocol


def _through_format(snapshot: RunSnapshot) -> RunSnapshot:
    document, tensors = pack_state(snapshot.to_state())
    revived = safetensors.torch.load(safetensors.torch.save(tensors))
    return RunSnapshot.from_state(unpack_state(json.loads(json.dumps(document)), revived))


@pytest.mark.parametrize(
    ("name", "options"), RESUMED, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in RESUMED]
)
def test_resumed_run_matches_uninterrupted(name: str, options: dict[str, Any]) -> None:
    full, snapshots, finished = _run(name, options)
    assert [s.round_index for s in snapshots] == [2, 4]
    assert any(r.metric == "crash" for r in full)
    for snapshot in snapshots:
        resumed, _, again = _run(name, options, _through_format(snapshot))
        assert resumed == [r for r in full if r.round > snapshot.round_index]
        assert again.structure() == finished.structure()
