"""Snapshots: a protocol restored from a snapshot, on a workload rebuilt from the spec, continues
exactly as the uninterrupted run would have (every record, its link loads and its structure
identical, bit for bit), after a trip through the on-disk format (JSON + safetensors)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import recommender_workload, tiny_spec_with

import etree.protocols.flower as flower_module
from etree.engine.checkpoint import (
    CheckpointError,
    RunSnapshot,
    copy_state,
    pack_state,
    stack_like,
    unpack_state,
)
from etree.engine.loop import run_protocol
from etree.engine.protocol import Protocol, Record, RoundCost
from etree.engine.sampling import participants
from etree.engine.workload import Workload
from etree.protocols import make_protocol
from experiments.checkpoints import load_checkpoint, save_checkpoint
from experiments.runner import RunCheckpoint, build_workload
from experiments.spec import Spec, spec_from_dict

ROUNDS = 6

# faults exercise the restored clock and structure: node 3 and the root crash between the round-2
# and round-4 snapshots (E-Tree and grouped fail over to a new root, FedAvg and HierFAVG lose theirs)
BASE = tiny_spec_with(
    name="snap",
    seed=5,
    rounds=ROUNDS,
    eval_every=1,
    topology={"devices": 16},
    network={"dropout": 0.2, "crash": [{"at_s": 0.3, "node": 3}, {"at_s": 0.25, "node": "root"}]},
)
PROTOCOLS = [
    ("etree", {"groups": [3, 1], "ratios": [1, 2]}),
    ("fedavg", {"participation": 0.5}),
    ("gossip", {}),
    ("gossip", {"merge": "age", "overlay": "random"}),
    ("hierfavg", {"edge_servers": 3}),
    ("grouped", {"groups": [3, 1], "public_nodes": True}),
    ("individual", {}),
    ("centralised", {}),
]


def _spec(name: str, options: dict[str, Any], network: dict[str, Any] | None = None) -> Spec:
    raw = {**BASE, "protocols": [{"name": name, **options}]}
    if network is not None:
        raw["network"] = network
    return spec_from_dict(raw)


def _continue(
    protocol: Protocol, workload: Workload, resume: RunSnapshot | None
) -> tuple[list[Record], list[RunSnapshot]]:
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


def _run(
    name: str, options: dict[str, Any], *, resume: RunSnapshot | None = None, network: dict[str, Any] | None = None
) -> tuple[list[Record], list[RunSnapshot], Protocol]:
    workload, _, _ = build_workload(_spec(name, options, network))  # rebuilt every time, as a new process would
    protocol = make_protocol(name, name, dict(options))
    records, snapshots = _continue(protocol, workload, resume)
    return records, snapshots, protocol


@functools.cache
def _uninterrupted(name: str, options: str) -> tuple[list[Record], list[RunSnapshot], Protocol]:
    """``_run`` without a resume, once per protocol and options (JSON) for all the tests that read it."""
    return _run(name, json.loads(options))


def _full(name: str, options: dict[str, Any]) -> tuple[list[Record], list[RunSnapshot], Protocol]:
    return _uninterrupted(name, json.dumps(options, sort_keys=True))


def _through_disk(run_dir: Path, spec: Spec, snapshot: RunSnapshot) -> RunSnapshot:
    save_checkpoint(run_dir, spec, RunCheckpoint(0, snapshot=snapshot))
    _, checkpoint = load_checkpoint(run_dir)
    assert checkpoint.snapshot is not None
    return checkpoint.snapshot


def _through_format(snapshot: RunSnapshot) -> RunSnapshot:
    """The snapshot after the trip ``experiments.checkpoints`` makes, without the files."""
    document, tensors = pack_state(snapshot.to_state())
    revived = safetensors.torch.load(safetensors.torch.save(tensors))
    return RunSnapshot.from_state(unpack_state(json.loads(json.dumps(document)), revived))


def _same_ending(full: Protocol, resumed: Protocol) -> None:
    assert resumed.structure() == full.structure()
    loads, again = full.link_loads(), resumed.link_loads()
    assert (loads is None) == (again is None)
    if loads is not None and again is not None:
        assert np.array_equal(loads.messages, again.messages) and np.array_equal(loads.ends, again.ends)


@pytest.mark.parametrize(
    ("name", "options"),
    PROTOCOLS,
    ids=[name + "".join(f"-{v}" for v in opts.values() if isinstance(v, str)) for name, opts in PROTOCOLS],
)
def test_resumed_run_matches_uninterrupted(name: str, options: dict[str, Any], tmp_path: Path) -> None:
    full, snapshots, finished = _full(name, options)
    assert [s.round_index for s in snapshots] == [2, 4]  # none after the last round
    for snapshot in snapshots:
        revived = _through_disk(tmp_path / str(snapshot.round_index), _spec(name, options), snapshot)
        resumed, _, again = _run(name, options, resume=revived)
        assert resumed == [r for r in full if r.round > snapshot.round_index]
        assert resumed[0].round == snapshot.round_index + 1
        _same_ending(finished, again)


def test_the_faults_change_what_the_snapshots_hold() -> None:
    """The crashes of ``BASE`` fall between the two snapshots, so resuming from the second restores a
    changed structure: E-Tree's new root, HierFAVG's lost cloud and the model it last held."""
    _, (early, late), _ = _full("etree", {"groups": [3, 1], "ratios": [1, 2]})
    assert early.clock.pending and not late.clock.pending
    assert not np.array_equal(early.protocol["tree"]["heads"][-1], late.protocol["tree"]["heads"][-1])
    _, (early, late), _ = _full("hierfavg", {"edge_servers": 3})
    assert early.protocol["frozen"] is None and late.protocol["frozen"] is not None
    assert early.protocol["timing"]["lost"] == [[], []] and late.protocol["timing"]["lost"][1] == [0]


RECOMMENDER_PROTOCOLS = [("fedavg", {}), ("gossip", {}), ("individual", {}), ("centralised", {}), ("popularity", {})]


@pytest.mark.parametrize(("name", "options"), RECOMMENDER_PROTOCOLS, ids=[p[0] for p in RECOMMENDER_PROTOCOLS])
def test_private_rows_survive_a_resume(name: str, options: dict[str, Any]) -> None:
    """Recommenders: each device's private user rows are state too (matrix factorisation)."""

    def run(resume: RunSnapshot | None) -> tuple[list[Record], list[RunSnapshot]]:
        workload = recommender_workload("mf", rounds=ROUNDS)
        return _continue(make_protocol(name, name, dict(options)), workload, resume)

    full, snapshots = run(None)
    for snapshot in snapshots:
        resumed, _ = run(_through_format(snapshot))
        assert resumed == [r for r in full if r.round > snapshot.round_index]


def test_flower_resumes_from_its_state_without_simulating_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower runs the whole simulation in ``setup``; a resumed run takes it from the state instead.
    (Flower itself, on Ray, is tests/test_flower.py's: a fixed run stands in for it here.)"""
    simulated: list[int] = []

    def fixed_run(
        workload: Workload, *, strategy: Any, participation: float, idle: np.ndarray | None, weighted: bool, label: str
    ) -> Any:
        simulated.append(workload.rounds)
        shared = workload.shared(workload.initial)
        rounds = range(1, workload.rounds + 1)
        trained = [participants(workload.seed, r, workload.devices, participation, idle).tolist() for r in rounds]
        rows = {
            device: {f"{name}@{r}": workload.initial[name] + r for name in workload.private for r in rounds}
            for device in range(workload.devices)
        }
        models = [{k: v + 0.1 * r for k, v in shared.items()} for r in range(workload.rounds + 1)]
        return flower_module.FlowerRun(models, trained, 1.5, "/tmp/ray", frozenset(shared), rows)

    monkeypatch.setattr(flower_module, "run_flower", fixed_run)

    def run(resume: RunSnapshot | None) -> tuple[list[Record], list[RunSnapshot]]:
        protocol = make_protocol("flower", "flower", {"participation": 0.5})
        return _continue(protocol, recommender_workload("mf", rounds=ROUNDS), resume)

    full, snapshots = run(None)
    assert simulated == [ROUNDS]
    for snapshot in snapshots:
        resumed, _ = run(_through_format(snapshot))
        assert resumed == [r for r in full if r.round > snapshot.round_index]
    assert simulated == [ROUNDS], "a resumed Flower run does not simulate again"


def test_crashes_after_the_snapshot_still_fire() -> None:
    calm, _, _ = _run("fedavg", {}, network={})
    ends = {r.round: r.sim_time_s for r in calm if r.metric == "accuracy"}
    # one crash before the round-2 snapshot, one between it and round 4
    crash = [{"at_s": ends[1] / 2, "node": 3}, {"at_s": (ends[2] + ends[3]) / 2, "node": 5}]
    full, snapshots, _ = _run("fedavg", {}, network={"crash": crash})
    crashes = [r for r in full if r.metric == "crash"]
    assert [r.value for r in crashes] == [3.0, 5.0], "both scheduled crashes fire in the uninterrupted run"
    early = snapshots[0]
    assert len(early.clock.pending) == 1 and early.clock.dead == (3,)
    resumed, _, _ = _run("fedavg", {}, resume=_through_format(early), network={"crash": crash})
    assert resumed == [r for r in full if r.round > early.round_index]
    assert [r.value for r in resumed if r.metric == "crash"] == [r.value for r in crashes[1:]]


def test_snapshot_does_not_copy_the_workload() -> None:
    _, snapshots, _ = _full("etree", {"groups": [3, 1], "ratios": [1, 2]})
    workload, _, _ = build_workload(_spec("fedavg", {}))
    data_bytes = workload.data.x.numel() * workload.data.x.element_size()
    _, tensors = pack_state(snapshots[0].protocol)
    saved = sum(t.numel() * t.element_size() for t in tensors.values())
    assert saved < data_bytes, "the fleet's data is rebuilt from the spec, not saved"


def test_a_snapshot_is_a_copy_later_rounds_leave_alone() -> None:
    _, (early, late), _ = _full("fedavg", {"participation": 0.5})
    assert not torch.equal(early.protocol["params"]["1.weight"], late.protocol["params"]["1.weight"])


class _Stateless(Protocol):
    """A plug-in protocol that never learned about checkpoints."""

    def setup(self, workload: Workload) -> None:
        self.workload = workload

    def run_round(self, round_index: int) -> RoundCost:
        return RoundCost(0.0, 0, 0)

    def evaluation_models(self) -> dict[str, torch.Tensor]:
        return {name: tensor.unsqueeze(0) for name, tensor in self.workload.initial.items()}


def test_a_protocol_without_state_dict_runs_on_without_mid_run_checkpoints(caplog: pytest.LogCaptureFixture) -> None:
    workload, _, _ = build_workload(_spec("fedavg", {}))
    records, snapshots = _continue(_Stateless("plain"), workload, None)
    assert snapshots == [] and max(r.round for r in records) == ROUNDS
    assert caplog.text.count("has no state_dict") == 1, "said once, not at every checkpoint"


def test_state_holds_only_tensors_arrays_and_json_values() -> None:
    assert copy_state({"a": [1, 2.5, None, "x", True], "t": torch.ones(2)}, "state")["a"] == [1, 2.5, None, "x", True]
    for bad in ((1, 2), np.int64(3), {1: 2}, {"$tensor": 1}, np.array(["text"]), object()):
        with pytest.raises(TypeError, match="not state"):
            pack_state({"x": bad})


@pytest.mark.parametrize(
    "spoil",
    [
        lambda document, tensors: tensors.pop("0"),
        lambda document, tensors: tensors.update({"0": tensors["0"].reshape(-1)}),
        lambda document, tensors: tensors.update({"0": tensors["0"].to(torch.float64)}),
        lambda document, tensors: tensors.update({"extra": torch.zeros(1)}),
        lambda document, tensors: document["params"]["weight"].update({"$tensor": "1"}),
    ],
    ids=["missing", "shape", "dtype", "extra", "named twice"],
)
def test_unpacking_checks_every_tensor(spoil: Callable[[dict[str, Any], dict[str, torch.Tensor]], Any]) -> None:
    document, tensors = pack_state({"params": {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}})
    spoil(document, tensors)
    with pytest.raises(CheckpointError):
        unpack_state(document, tensors)


def test_a_state_that_does_not_fit_the_model_is_refused() -> None:
    like = {"weight": torch.zeros(3, 2)}
    assert stack_like({"weight": torch.ones(5, 3, 2)}, like, "params", rows=5)["weight"].shape == (5, 3, 2)
    for saved in ({"weight": torch.ones(5, 3, 3)}, {"weight": torch.ones(5, 3, 2, dtype=torch.float64)}, {}):
        with pytest.raises(CheckpointError, match="params"):
            stack_like(saved, like, "params", rows=5)
