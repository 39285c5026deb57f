"""Snapshots: a protocol restored from a snapshot, on a workload rebuilt from the spec, continues
exactly as the uninterrupted run would have (every record identical, bit for bit)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from helpers import tiny_spec_with

from etree.engine.checkpoint import RunSnapshot
from etree.engine.loop import run_protocol
from etree.engine.protocol import Record
from etree.protocols import make_protocol
from experiments.runner import build_workload
from experiments.spec import spec_from_dict

ROUNDS = 6

# faults exercise the restored clock (crashes, dropouts); test_crashes_after_the_snapshot_still_fire times them
BASE = tiny_spec_with(
    name="snap",
    seed=5,
    rounds=ROUNDS,
    eval_every=1,
    topology={"devices": 16},
    network={"dropout": 0.2, "crash": [{"at_s": 0.3, "node": 3}, {"at_s": 2.0, "node": "root"}]},
)
PROTOCOLS = [
    ("etree", {"groups": [3, 1], "ratios": [1, 2]}),
    ("fedavg", {"participation": 0.5}),
    ("gossip", {}),
    ("hierfavg", {"edge_servers": 3}),
    ("grouped", {"groups": [3, 1]}),
    ("individual", {}),
]


def _run(
    name: str, options: dict[str, Any], *, resume: RunSnapshot | None = None, network: dict[str, Any] | None = None
) -> tuple[list[Record], list[RunSnapshot]]:
    raw = {**BASE, "protocols": [{"name": name, **options}]}
    if network is not None:
        raw["network"] = network
    spec = spec_from_dict(raw)
    workload, _, _ = build_workload(spec)  # rebuilt every time, as a new process would
    protocol = make_protocol(name, name, dict(options))
    snapshots: list[RunSnapshot] = []
    records = list(
        run_protocol(
            protocol,
            workload,
            rounds=ROUNDS,
            eval_every=1,
            resume=resume,
            checkpoint_every=2,
            on_checkpoint=snapshots.append,
        )
    )
    return records, snapshots


@pytest.mark.parametrize(("name", "options"), PROTOCOLS, ids=[p[0] for p in PROTOCOLS])
def test_resumed_run_matches_uninterrupted(name: str, options: dict[str, Any]) -> None:
    full, snapshots = _run(name, options)
    assert [s.round_index for s in snapshots] == [2, 4]  # none after the last round
    for snapshot in snapshots:
        revived = pickle.loads(pickle.dumps(snapshot))  # the snapshot survives a trip to disk
        resumed, _ = _run(name, options, resume=revived)
        assert resumed == [r for r in full if r.round > snapshot.round_index]
        assert resumed[0].round == snapshot.round_index + 1


def test_crashes_after_the_snapshot_still_fire() -> None:
    calm, _ = _run("fedavg", {}, network={})
    ends = {r.round: r.sim_time_s for r in calm if r.metric == "accuracy"}
    # one crash before the round-2 snapshot, one between it and round 4
    crash = [{"at_s": ends[1] / 2, "node": 3}, {"at_s": (ends[2] + ends[3]) / 2, "node": 5}]
    full, snapshots = _run("fedavg", {}, network={"crash": crash})
    crashes = [r for r in full if r.metric == "crash"]
    assert [r.value for r in crashes] == [3.0, 5.0], "both scheduled crashes fire in the uninterrupted run"
    early = snapshots[0]
    assert len(early.clock.pending) == 1 and early.clock.dead == (3,)
    resumed, _ = _run("fedavg", {}, resume=early, network={"crash": crash})
    assert resumed == [r for r in full if r.round > early.round_index]
    assert [r.value for r in resumed if r.metric == "crash"] == [r.value for r in crashes[1:]]


def test_snapshot_does_not_copy_the_workload() -> None:
    _, snapshots = _run("etree", {"groups": [3, 1], "ratios": [1, 2]})
    spec = spec_from_dict({**BASE, "protocols": [{"name": "fedavg"}]})
    workload, _, _ = build_workload(spec)
    data_bytes = workload.data.x.numel() * workload.data.x.element_size()
    assert len(snapshots[0].protocol_state) < data_bytes, "the fleet's data must be referenced, not pickled"
