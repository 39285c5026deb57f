"""Simulated network time, contention, faults and heterogeneity (issue 5)."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import tomli_w
from helpers import tiny_spec_with

from etree.network.clock import SimClock
from etree.network.conditions import Crash, Distribution, NetworkConditions
from etree.network.heterogeneity import apply_heterogeneity
from etree.network.links import LinkLedger
from etree.network.model import NetworkModel, fifo_link_arrivals
from etree.trees.timing import TreeTiming, round_messages
from etree.trees.tree import AggregationTree, star_tree
from experiments.cli import main
from experiments.runner import run_spec
from experiments.spec import SpecError, load_spec, spec_from_dict
from topologies import build_topology
from topologies.attributes import annotated_graph

SIZE = 10_000  # bytes per message


# The max-plus recursion over the tree that the simpy engine replaced: kept here as an
# independent oracle for the contention-free, fault-free case.
def synchronous_round_timing(
    tree: AggregationTree,
    net: NetworkModel,
    ready: np.ndarray,
    active: np.ndarray,
    top: int,
    size: int,
    *,
    public_down: bool = True,
) -> tuple[float, int]:
    """Duration and message count of one synchronous tree round (max-plus over the tree).

    ``ready[i]`` is when active device ``active[i]`` finished training; a head
    aggregates when its slowest active child has arrived; layers up to ``top``
    aggregate, then the result travels back down to every device. An active
    public node (``tree.public``) also sends its model to every other layer-1
    head, and with ``public_down`` hears back from each of them.
    """
    cluster = tree.parents[0][active]
    heads = tree.heads[0]
    arrival = np.zeros(len(heads))
    messages = 0
    shared = np.isin(active, tree.public)
    for k, head in enumerate(heads):
        mine = active[cluster == k]
        if len(mine):
            arrival[k] = np.max(ready[cluster == k] + net.transfer_s(int(head), mine, size))
            messages += int(np.sum(mine != head))
        guests = shared & (cluster != k)  # public nodes whose home is another cluster
        if guests.any():
            arrival[k] = max(arrival[k], float(np.max(ready[guests] + net.transfer_s(int(head), active[guests], size))))
            messages += int(guests.sum())
    for level in range(1, top):  # upward: layer-level heads report to layer-(level+1) heads
        parent = tree.parents[level]
        children = tree.heads[level - 1]
        above = tree.heads[level]
        nxt = np.zeros(len(above))
        for g, head in enumerate(above):
            mine = np.flatnonzero(parent == g)
            nxt[g] = np.max(arrival[mine] + net.transfer_s(int(head), children[mine], size))
            messages += int(np.sum(children[mine] != head))
        arrival = nxt
    done = arrival
    for level in range(top - 1, 0, -1):  # downward: each head forwards to its child heads
        parent = tree.parents[level]
        children = tree.heads[level - 1]
        above = tree.heads[level]
        down = np.zeros(len(children))
        for g, head in enumerate(above):
            mine = np.flatnonzero(parent == g)
            down[mine] = done[g] + net.transfer_s(int(head), children[mine], size)
            messages += int(np.sum(children[mine] != head))
        done = down
    finish = 0.0
    for k, head in enumerate(heads):  # every device hears from its layer-1 head
        mine = np.flatnonzero(tree.parents[0] == k)
        finish = max(finish, float(np.max(done[k] + net.transfer_s(int(head), mine, size))))
        messages += int(np.sum(mine != head))
        guests = tree.public[tree.parents[0][tree.public] != k] if public_down else tree.public[:0]
        if len(guests):
            finish = max(finish, float(np.max(done[k] + net.transfer_s(int(head), guests, size))))
            messages += len(guests)
    return finish, messages


def relay_graph(devices: int, *, latency: float = 0.01, fast: float = 1e9, slow: float = 1e6):
    """``devices`` devices on fast links to a relay (node D), the relay on one slow link to a server (D+1)."""
    relay, server = devices, devices + 1
    edges = [(d, relay) for d in range(devices)] + [(relay, server)]
    bandwidth = [fast] * devices + [slow]
    positions = np.zeros((devices + 2, 2))
    roles = ["device"] * devices + ["edge", "cloud"]
    return annotated_graph("relay", devices, positions, edges, latency, bandwidth, 1e9, roles)


def timed_round(graph, devices, *, contention=False, compute=0.0, conditions=None):
    conditions = conditions or NetworkConditions(contention=contention)
    network = NetworkModel(graph)
    clock = SimClock(conditions)
    timing = TreeTiming(star_tree(devices, devices + 1), network, clock, SIZE, failover=False)
    active = np.arange(devices)
    return timing.run_round(active, np.full(devices, compute), 1, True), clock


def test_a_message_arrives_when_the_formula_says():
    graph = relay_graph(1, latency=0.01, fast=1e8, slow=2e6)
    one_way = 2 * 0.01 + 8 * SIZE / 2e6  # two hops of latency + bits over the bottleneck
    outcome, clock = timed_round(graph, 1, compute=0.5)
    assert outcome.duration_s == pytest.approx(0.5 + 2 * one_way, rel=1e-12)  # up, then the model comes back
    assert clock.now == pytest.approx(0.5 + 2 * one_way, rel=1e-12)
    network = NetworkModel(graph)
    assert network.transfer_s(2, np.array([0]), SIZE)[0] == pytest.approx(one_way, rel=1e-15)


@pytest.mark.parametrize("n", [2, 5, 20])
def test_contention_n_uploads_into_one_link_take_n_times_one(n):
    graph = relay_graph(n, latency=0.0015, fast=1e12, slow=1e6)
    latency = 2 * 0.0015
    alone, _ = timed_round(graph, n, contention=False)
    shared, _ = timed_round(graph, n, contention=True)
    one = (alone.duration_s - 2 * latency) / 2  # one transfer without queueing
    assert one == pytest.approx(8 * SIZE / 1e6, rel=1e-9)
    assert (shared.duration_s - 2 * latency) / 2 == pytest.approx(n * one, rel=1e-9)


def test_fifo_queue_recurrence():
    arrivals = np.array([1.0, 1.0, 5.0, 1.5, 9.0])
    links = np.array([0, 0, 0, -1, 1])
    out = fifo_link_arrivals(arrivals, links, np.full(5, 2.0))
    assert out.tolist() == [1.0, 3.0, 5.0, 1.5, 9.0]
    out = fifo_link_arrivals(np.array([0.0, 0.5, 0.6]), np.zeros(3, dtype=int), np.ones(3))
    assert out.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fault_free_timing_equals_the_max_plus_recursion(seed):
    graph = build_topology("random_links", 30, seed=seed)
    network = NetworkModel(graph)
    rng = np.random.default_rng(seed)
    heads0 = np.array([0, 7, 14, 21])
    parents0 = np.minimum(np.arange(30) // 8, 3)
    tree = AggregationTree(heads=(heads0, np.array([7])), parents=(parents0, np.zeros(4, dtype=np.int64)))
    active = np.sort(rng.choice(30, size=20, replace=False))
    compute = rng.uniform(0.0, 0.2, size=20)
    for top in (1, 2):
        clock = SimClock()
        timing = TreeTiming(tree, network, clock, SIZE, failover=False)
        outcome = timing.run_round(active, compute, top, True)
        expected, messages = synchronous_round_timing(tree, network, compute, active, top, SIZE)
        assert outcome.duration_s == pytest.approx(expected, rel=1e-12)
        assert outcome.messages == messages == round_messages(tree, active, top, True)


def test_deadline_drops_late_uploads_and_the_head_aggregates_at_the_deadline():
    graph = relay_graph(3)
    compute = np.array([0.0, 0.0, 10.0])  # device 2 is a straggler
    conditions = NetworkConditions(deadline_s=1.0, contention=False)  # downloads not queued: the formula below
    network = NetworkModel(graph)
    clock = SimClock(conditions)
    timing = TreeTiming(star_tree(3, 4), network, clock, SIZE, failover=False)
    outcome = timing.run_round(np.arange(3), compute, 1, True)
    assert outcome.delivered.tolist() == [True, True, False]
    assert outcome.late.tolist() == [False, False, True]
    down = network.transfer_s(4, np.array([0]), SIZE)[0]
    assert outcome.duration_s == pytest.approx(1.0 + down, rel=1e-12)


def test_a_dead_server_is_detected_after_the_timeout_and_nothing_is_delivered():
    graph = relay_graph(3)
    conditions = NetworkConditions(detection_timeout_s=2.0, crash=(Crash(0.0, "server"),))
    clock = SimClock(conditions)
    timing = TreeTiming(star_tree(3, 4), NetworkModel(graph), clock, SIZE, failover=False)
    clock.schedule_crashes(conditions.crash, lambda node: 4)
    outcome = timing.run_round(np.arange(3), np.zeros(3), 1, True)
    assert not outcome.delivered.any() and timing.lost[0] == {0}
    assert outcome.duration_s > 2.0
    assert timing.orphaned(np.arange(3)).all()
    assert clock.take_events() == [(0.0, "crash", 4)]


def test_link_ledger_counts_bytes_on_every_link_of_the_path():
    graph = relay_graph(4)
    network = NetworkModel(graph)
    ledger = LinkLedger(network, SIZE)
    timing = TreeTiming(star_tree(4, 5), network, SimClock(), SIZE, failover=False, ledger=ledger)
    timing.run_round(np.arange(4), np.zeros(4), 1, True)
    loads = ledger.loads()
    by_link = {tuple(e): m for e, m in zip(loads.ends.tolist(), loads.messages.tolist(), strict=True)}
    assert by_link[(4, 5)] == 8  # 4 uploads and 4 downloads over the relay-server link
    assert all(by_link[(d, 4)] == 2 for d in range(4))
    assert loads.bytes_sent.sum() == loads.messages.sum() * SIZE


def test_heterogeneity_is_seeded_and_the_trace_overrides(tmp_path):
    graph = build_topology("edge_cloud", 30, seed=0)
    conditions = NetworkConditions(
        compute_flops=Distribution("lognormal", median=1e9, sigma=0.5),
        bandwidth_bps=Distribution("uniform", low=1e6, high=2e7),
    )
    a = apply_heterogeneity(graph, 30, conditions, seed=5)
    b = apply_heterogeneity(graph, 30, conditions, seed=5)
    flops = [a.nodes[d]["compute_flops"] for d in range(30)]
    assert flops == [b.nodes[d]["compute_flops"] for d in range(30)]
    assert len(set(flops)) == 30 and graph.nodes[0]["compute_flops"] == 1e9  # the input graph is untouched
    assert all(1e6 <= a.edges[u, v]["bandwidth_bps"] <= 2e7 for u, v in a.edges() if min(u, v) < 30)
    trace = tmp_path / "trace.csv"
    trace.write_text("device,compute_flops,bandwidth_bps\n3,5e8,\n4,,1e5\n")
    c = apply_heterogeneity(graph, 30, NetworkConditions(trace=str(trace)), seed=5)
    assert c.nodes[3]["compute_flops"] == 5e8 and c.nodes[4]["compute_flops"] == 1e9
    assert all(c.edges[4, n]["bandwidth_bps"] == 1e5 for n in c.neighbors(4))


# -- whole runs ---------------------------------------------------------------
def _spec(tmp_path, network: dict, rounds: int = 10):
    """A 40-device edge-cloud run of FedAvg and E-Tree under ``network``, saved as faults.toml."""
    raw = tiny_spec_with(
        name="faults",
        seed=1,
        rounds=rounds,
        eval_every=1,
        topology={"kind": "edge_cloud", "devices": 40},
        network=network,
        protocols=[
            {"name": "fedavg"},
            {"name": "etree", "groups": [4, 1], "ratios": [1, 2], "pretrain_epochs": 1, "public_samples": 200},
        ],
    )
    path = tmp_path / "faults.toml"
    path.write_text(tomli_w.dumps(raw))
    return load_spec(path)


def _series(records, protocol, metric):
    return [(r.round, r.sim_time_s, r.value) for r in records if r.protocol == protocol and r.metric == metric]


def test_etree_learns_on_after_its_root_crashes_and_fedavg_stops_without_its_server(tmp_path):
    crashes = [
        {"at_s": 0.25, "node": "server", "protocol": "fedavg"},
        {"at_s": 0.25, "node": "root", "protocol": "etree"},
    ]
    spec = _spec(tmp_path, {"detection_timeout_s": 0.5, "crash": crashes}, rounds=14)
    records = run_spec(spec).records
    for label in ("fedavg", "etree"):
        (crash,) = _series(records, label, "crash")
        accuracy = _series(records, label, "accuracy")
        after = [value for round_, _, value in accuracy if round_ > crash[0]]
        if label == "fedavg":
            assert len(set(after)) == 1  # flat: nobody aggregates any more
        else:
            assert max(after) > after[0]  # still learning
            assert _series(records, label, "failover")  # a new root was promoted
    fedavg_time = _series(records, "fedavg", "accuracy")
    assert fedavg_time[-1][1] > fedavg_time[-2][1]  # time still passes (devices wait on a dead server)


def test_same_seed_gives_identical_sim_time_columns(tmp_path):
    network = {
        "contention": True,
        "dropout": 0.2,
        "deadline_s": 0.2,
        "late": "stale",
        "compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0},
        "bandwidth_bps": {"kind": "uniform", "low": 1e6, "high": 2e7},
        "crash": [{"at_s": 0.3, "node": "head"}],
    }
    spec = _spec(tmp_path, network, rounds=6)
    first = [(r.protocol, r.metric, r.sim_time_s, r.bytes_sent, r.value) for r in run_spec(spec).records]
    second = [(r.protocol, r.metric, r.sim_time_s, r.bytes_sent, r.value) for r in run_spec(spec).records]
    assert first == second
    assert any(row[1] == "crash" for row in first)


def test_timing_off_keeps_time_at_zero_and_counts_bytes(tmp_path):
    records = run_spec(_spec(tmp_path, {"timing": False}, rounds=2)).records
    assert all(r.sim_time_s == 0.0 for r in records)
    assert all(r.bytes_sent > 0 for r in records if r.round == 2)


def test_a_fault_run_writes_links_and_marks_crashes(tmp_path):
    spec = _spec(tmp_path, {"crash": [{"at_s": 0.2, "node": "server", "protocol": "fedavg"}]}, rounds=4)
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "faults.toml"), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "links.csv").open()))
    assert {r["protocol"] for r in rows} == {"fedavg", "etree"}
    summary = (out / "summary.md").read_text()
    assert "Busiest link" in summary and "| fedavg | crash |" in summary
    assert spec.network.crash[0].node == "server"
    resaved = load_spec(out / "spec.toml")  # the resolved spec round-trips
    assert resaved.network == spec.network


BASE = {"topology": {"kind": "edge_cloud", "devices": 10}, "protocols": [{"name": "fedavg"}]}


@pytest.mark.parametrize(
    ("network", "field"),
    [
        ({"dropout": 1.5}, "network.dropout"),
        ({"dropuot": 0.1}, "network.dropuot"),
        ({"late": "later"}, "network.late"),
        ({"compression": 0}, "network.compression"),
        ({"detection_timeout_s": -1}, "network.detection_timeout_s"),
        ({"crash": [{"at_s": 3.0}]}, "network.crash[0].node"),
        ({"crash": [{"at_s": -3.0, "node": "server"}]}, "network.crash[0].at_s"),
        ({"crash": [{"at_s": 3.0, "node": "boss"}]}, "network.crash[0].node"),
        ({"crash": [{"at_s": 3.0, "node": "root", "protocol": "nope"}]}, "network.crash[0].protocol"),
        ({"crash": [{"at_s": 3.0, "node": 1, "when": 2}]}, "network.crash[0].when"),
        ({"compute_flops": {"kind": "gamma"}}, "network.compute_flops.kind"),
        ({"compute_flops": {"kind": "uniform", "low": 2.0}}, "network.compute_flops.high"),
        ({"bandwidth_bps": {"kind": "lognormal", "median": 1e6, "sigma": -1}}, "network.bandwidth_bps.sigma"),
        ({"timing": False, "deadline_s": 1.0}, "network.deadline_s"),
    ],
)
def test_bad_fault_specs_name_the_field(network, field):
    with pytest.raises(SpecError, match="^" + re.escape(field) + ":") as error:
        spec_from_dict({**BASE, "network": network})
    assert "\n" not in str(error.value)


def test_cli_reports_a_bad_fault_spec_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(tiny_spec_with(network={"dropout": 2.0})))
    assert main(["run", str(path), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: network.dropout:")
