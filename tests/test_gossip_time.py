"""Asynchronous gossip timing: one period per cycle, seeded phases, late pushes, dropout and crashes."""

import numpy as np
import pytest
import torch
from helpers import softmax_workload
from sklearn.datasets import load_digits

from etree.core.errors import ProtocolError
from etree.engine.loop import run_protocol
from etree.network.clock import SimClock
from etree.network.conditions import Crash, NetworkConditions
from etree.network.model import NetworkModel
from etree.protocols import make_protocol
from etree.protocols.gossip import LATE_TARGET, expected_late_fraction, merge_delay, merge_models, wake_phases
from topologies import build_topology
from topologies.attributes import annotated_graph


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32)[:600], y[:600], (x / 16).astype(np.float32)[600:800], y[600:800]


def _workload(digits, graph, devices, *, network=None, lr=0.05, seed=1):
    parts = np.array_split(np.random.default_rng(seed).permutation(len(digits[1])), devices)
    return softmax_workload(digits, parts, graph, lr=lr, batch_size=8, seed=seed, rounds=6, network=network)


def _started(protocol, workload):
    """A protocol set up on a fresh clock with its crashes scheduled, as ``run_protocol`` does."""
    protocol.clock = SimClock(workload.network)
    protocol.setup(workload)
    protocol.clock.schedule_crashes(workload.network.crashes_for(protocol.label), protocol.resolve_node)
    return protocol


def test_a_cycle_lasts_one_period(digits):
    graph = build_topology("random_geometric", 20, seed=2)
    workload = _workload(digits, graph, 20)
    records = list(run_protocol(make_protocol("gossip", "g", {"period_s": 0.7}), workload, rounds=3, eval_every=1))
    times = sorted({(r.round, r.sim_time_s) for r in records})
    assert times == [(r, pytest.approx(0.7 * r)) for r in range(4)]


def test_the_default_period_makes_few_pushes_late(digits):
    """Default Δ: the shortest period at which at most 5% of pushes are expected late, from each
    device's epoch plus its mean push to every other device (the random overlay). Measured over 30
    cycles few are; a period of one median epoch and push makes a third or more of them late."""
    devices = 40
    graph = build_topology("random_geometric", devices, seed=2)
    workload = _workload(digits, graph, devices)
    protocol = _started(make_protocol("gossip", "g", {}), workload)
    net = NetworkModel(graph)
    compute = net.compute_s(np.arange(devices), workload.epoch_flops)
    everyone = np.arange(devices)
    push = np.array([net.transfer_s(d, np.delete(everyone, d), workload.wire_bytes).mean() for d in everyone])
    busy = compute + push
    assert expected_late_fraction(busy, protocol.period) == pytest.approx(LATE_TARGET, rel=1e-3)
    assert expected_late_fraction(busy, 0.98 * protocol.period) > LATE_TARGET  # the shortest such period
    assert protocol.structure()["period_s"] == protocol.period
    assert protocol.run_round(1).duration_s == protocol.period

    def late_fraction(options):
        records = run_protocol(make_protocol("gossip", "g", options), workload, rounds=30, eval_every=30)
        return {r.metric: r.value for r in records if r.round == 30}["late_fraction"]

    assert late_fraction({}) < 0.1
    assert late_fraction({"period_s": float(np.median(busy))}) > 0.33


def test_expected_late_fraction_is_the_chance_over_uniform_phases():
    rng = np.random.default_rng(0)
    busy = np.array([0.2, 0.7, 1.4, 2.5])
    phases = rng.random((2, 200_000))
    for b in busy:  # late: the push arrives after the receiver's next wake-up
        late = float(np.mean(phases[0] + b > phases[1] + 1.0))
        assert expected_late_fraction(np.array([b]), 1.0) == pytest.approx(late, abs=0.005)


def test_phases_are_seeded_per_device_and_within_the_period():
    phases = wake_phases(7, 50, 2.0)
    assert np.all((phases >= 0) & (phases < 2.0))
    assert len(np.unique(phases)) == 50  # devices wake at different moments
    assert np.array_equal(phases, wake_phases(7, 50, 2.0))
    assert np.array_equal(phases[:10], wake_phases(7, 10, 2.0))  # a device's phase ignores the fleet size
    assert not np.array_equal(phases, wake_phases(8, 50, 2.0))


def test_merge_delay_counts_cycles_to_the_receivers_wake_up():
    # receiver wakes at 0.3 + k (period 1): on time up to 1.3, then one cycle later up to 2.3
    arrival = np.array([0.1, 1.3, 1.31, 2.3, 2.4])
    assert merge_delay(arrival, np.full(5, 0.3), 1.0).tolist() == [1, 1, 2, 2, 3]


def test_a_late_push_is_merged_one_cycle_later_not_lost(digits):
    """Two devices on a 1 s link, period 1 s, instant compute: the push of the device that wakes
    later reaches the other after its next wake-up (late, merged a cycle later); the other is on time."""
    graph = annotated_graph("pair", 2, np.zeros((2, 2)), [(0, 1)], 1.0, 1e15, 1e18)
    workload = _workload(digits, graph, 2, lr=1e-9)  # training barely moves a model
    protocol = _started(make_protocol("gossip", "g", {"period_s": 1.0}), workload)
    late, early = (1, 0) if protocol.phase[1] > protocol.phase[0] else (0, 1)
    protocol.params = {
        name: torch.stack([torch.zeros_like(t[0]), torch.ones_like(t[0])]) for name, t in protocol.params.items()
    }
    start = {d: float(d) for d in (0, 1)}  # every parameter of device d is d

    def value(device):
        return protocol.params["1.weight"][device]

    costs = [protocol.run_round(1)]
    for device in (0, 1):
        assert torch.allclose(value(device), torch.full_like(value(device), start[device]), atol=1e-5)
    costs.append(protocol.run_round(2))  # the on-time push (early -> late) is merged, the late one not yet
    assert torch.allclose(value(late), torch.full_like(value(late), 0.5), atol=1e-5)
    assert torch.allclose(value(early), torch.full_like(value(early), start[early]), atol=1e-5)
    costs.append(protocol.run_round(3))  # now the late push of cycle 1 reaches the early device
    assert torch.allclose(value(early), torch.full_like(value(early), 0.5), atol=1e-5)
    assert all(cost.events == {"late_pushes": 1.0} and cost.messages == 2 for cost in costs)
    assert protocol.clock.now == pytest.approx(3.0)


def test_merging_a_batch_of_pushes_equals_pushing_rows():
    params = {"w": torch.tensor([[1.0], [2.0], [4.0]])}
    peers = torch.tensor([1, 2, 1])
    assert torch.equal(merge_models(params, peers, sent=params)["w"], merge_models(params, peers)["w"])
    two = merge_models(params, torch.tensor([0]), sent={"w": torch.tensor([[3.0]])})  # one message, to device 0
    assert two["w"].flatten().tolist() == [2.0, 2.0, 4.0]


def test_dropout_removes_about_its_share_of_pushes(digits):
    graph = build_topology("random_geometric", 200, seed=1)
    workload = _workload(digits, graph, 200, network=NetworkConditions(dropout=0.3))
    protocol = _started(make_protocol("gossip", "g", {}), workload)
    costs = [protocol.run_round(r) for r in range(1, 6)]
    sent = sum(c.messages for c in costs)
    assert sent / (5 * 200) == pytest.approx(0.7, abs=0.05)
    assert sum(c.bytes_sent for c in costs) == sent * workload.wire_bytes


def test_a_crashed_device_stops_sending_and_changing(digits):
    network = NetworkConditions(crash=(Crash(at_s=2.5, node=3),))
    workload = _workload(digits, build_topology("random_geometric", 10, seed=3), 10, network=network)
    protocol = _started(make_protocol("gossip", "g", {"period_s": 1.0, "overlay": "random"}), workload)
    phase = protocol.phase[3]
    frozen = None
    for r in range(1, 7):
        protocol.run_round(r)
        wakes = (r - 1) + phase
        assert (3 in protocol.senders) == (wakes < 2.5)  # sends only while alive at its wake-up
        if wakes >= 2.5:
            model = protocol.params["1.weight"][3].clone()
            if frozen is not None:
                assert torch.equal(model, frozen)  # a dead device neither trains nor merges
            frozen = model
    assert len(protocol.senders) == 9


def test_same_seed_gives_identical_records_under_faults(digits):
    network = NetworkConditions(dropout=0.2, crash=(Crash(at_s=1.5, node=4),))
    workload = _workload(digits, build_topology("random_geometric", 30, seed=2), 30, network=network)

    def records():
        return list(
            run_protocol(
                make_protocol("gossip", "g", {"merge": "age", "period_s": 1.0}), workload, rounds=4, eval_every=1
            )
        )

    first = records()
    assert first == records()
    assert any(r.metric == "crash" for r in first)


@pytest.mark.parametrize("period", [0, -1.0, True, "1", float("inf")])
def test_a_bad_period_names_the_field(period):
    with pytest.raises(ProtocolError, match=r"protocols\.g\.period_s"):
        make_protocol("gossip", "g", {"period_s": period})
