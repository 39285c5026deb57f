"""The Flower baseline agrees with in-engine FedAvg, stays on loopback and cleans up after itself;
Flower's other strategies agree with their in-engine counterparts.

Each Flower run starts Ray (15-30 s on 2 CPUs), so the runs are few and shared:
one weighted full-participation run, one unweighted run with half the devices
sampled per round, one matrix-factorisation run (private user embeddings) with
half the devices sampled and whole item tables, one MF and one NCF run with
touched item rows only, one run of every other strategy in turn (Ray started
once) and one traced subprocess run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from helpers import ray_leftovers, recommender_workload
from sklearn.datasets import load_digits

import topologies
from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model
from clients.params import ParamStack, init_params
from clients.recommendation.training import ROWS, touched_items
from clients.train_config import TrainConfig
from etree.backends.flower_strategies import (
    STRATEGY_OPTIONS,
    FlowerStrategy,
    build_strategy,
    merge_item_rows,
    row_tables,
    with_client_lr,
)
from etree.backends.ray_guest import GUEST_ENVIRONMENT
from etree.core.errors import EtreeError, ProtocolError
from etree.engine import Record, Workload, run_protocol
from etree.engine.sampling import participants
from etree.network.model import NetworkModel
from etree.protocols import make_protocol
from etree.protocols.flower import FlowerProtocol, run_flower_strategies
from etree.trees.servers import choose_server

ROOT = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = ROOT / "benchmarks" / "check_no_outbound.py"
DEVICES, ROUNDS = 8, 3


def _workload() -> Workload:
    """Digits split by numpy into 8 devices of unequal size (so weighting matters), 3 rounds."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:400], order[400:]
    parts = np.array_split(train[: 60 * DEVICES], DEVICES)
    parts = [np.sort(p[: 20 + 5 * d]) for d, p in enumerate(parts)]  # 20..55 samples
    model = build_model("softmax", (64,), 10)
    return Workload(
        model=model,
        initial=init_params(model, 1),
        data=pack_fleet(x, y, parts),
        x_test=torch.from_numpy(x[test]),
        y_test=torch.from_numpy(y[test]),
        graph=topologies.build_topology("random_geometric", DEVICES, seed=0),
        train=TrainConfig(lr=0.1, local_epochs=1, batch_size=8),
        seed=7,
        input_shape=(64,),
        num_classes=10,
        rounds=ROUNDS,
    )


def _drive(name: str, options: dict[str, Any], workload: Workload):
    """Run a protocol through ``run_protocol``; keep its records and its global model after every round."""
    protocol = make_protocol(name, name, options)
    records: list[Record] = []
    models: dict[int, ParamStack] = {}
    for record in run_protocol(protocol, workload, rounds=ROUNDS, eval_every=1):
        if record.round not in models:  # the first record of a snapshot: the protocol holds that round's model
            models[record.round] = {k: v.clone() for k, v in protocol.evaluation_models().items()}
        records.append(record)
    return protocol, records, models


@cache
def _pair(weighted: bool, participation: float):
    """Flower and in-engine FedAvg with the same options on the same workload (run once per module)."""
    workload = _workload()
    options: dict[str, Any] = {"weighted": weighted, "participation": participation}
    started = time.perf_counter()
    flower = _drive("flower", options, workload)
    flower_s = time.perf_counter() - started
    return workload, flower, _drive("fedavg", options, workload), flower_s


@pytest.mark.parametrize(("weighted", "participation"), [(True, 1.0), (False, 0.5)])
def test_flower_matches_in_engine_fedavg(weighted, participation):
    workload, (protocol, flower_records, flower_models), (_, engine_records, engine_models), _ = _pair(
        weighted, participation
    )
    assert isinstance(protocol, FlowerProtocol)
    assert sorted(flower_models) == sorted(engine_models) == list(range(ROUNDS + 1))
    worst = 0.0
    for round_index in range(ROUNDS + 1):
        a, b = flower_models[round_index], engine_models[round_index]
        assert a.keys() == b.keys()
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff <= 1e-5, f"round {round_index}: Flower and in-engine global models differ by {diff}"
        worst = max(worst, diff)
    moved = max((flower_models[ROUNDS][k][0] - workload.initial[k]).abs().max().item() for k in workload.initial)
    assert moved > 1e-2  # training really moved the model, so agreement is not trivial
    print(f"\nweighted={weighted} participation={participation}: max |param diff| over rounds = {worst:.2e}")

    assert len(flower_records) == len(engine_records)
    one_sample = 1.0 / len(workload.y_test)  # a model 1e-7 away can flip only a sample on a decision boundary
    for f, e in zip(flower_records, engine_records, strict=True):
        assert (f.round, f.metric) == (e.round, e.metric)
        assert (f.sim_time_s, f.bytes_sent) == (e.sim_time_s, e.bytes_sent)  # same cost model, same numbers
        tolerance = one_sample if f.metric == "accuracy" else 1e-5
        assert abs(f.value - e.value) <= tolerance, (f, e)

    # Flower trained exactly the devices the in-engine FedAvg sampled, every round; never the server.
    server = protocol.tree.root
    assert server < DEVICES and protocol.idle is not None and protocol.idle.tolist() == [server]
    for round_index, trained in enumerate(protocol.run.trained, start=1):
        assert trained == participants(workload.seed, round_index, DEVICES, participation, protocol.idle).tolist()
        assert server not in trained
    if participation < 1:
        assert len(protocol.run.trained[0]) == round(participation * (DEVICES - 1))


def _drive_recommender(name: str, options: dict[str, Any], workload: Workload):
    """Like ``_drive``, keeping every device's private rows after every round too."""
    protocol = make_protocol(name, name, options)
    records: list[Record] = []
    shared: dict[int, ParamStack] = {}
    private: dict[int, ParamStack] = {}
    for record in run_protocol(protocol, workload, rounds=ROUNDS, eval_every=1):
        if record.round not in shared:
            models = protocol.device_models()
            shared[record.round] = {k: v.clone() for k, v in models.shared.items()}
            private[record.round] = {k: v.clone() for k, v in models.private.items()}
        records.append(record)
    return protocol, records, shared, private


def test_flower_trains_a_recommender_as_in_engine_fedavg_without_sending_user_rows():
    """BPR-MF, half the devices per round: Flower's nodes keep their user rows in ``context.state`` and
    reply with item parameters only; global models, every device's rows and HR@10/NDCG@10 agree with
    in-engine FedAvg after every round."""
    workload = recommender_workload("mf", devices=DEVICES, users_per_device=2, rounds=ROUNDS)
    # whole item tables on both sides: Flower's FedAvg averages them as in-engine FedAvg's dense item merge does
    options: dict[str, Any] = {"weighted": True, "participation": 0.5, "item_merge": "dense"}
    protocol, flower_records, flower_shared, flower_private = _drive_recommender("flower", options, workload)
    _, engine_records, engine_shared, engine_private = _drive_recommender("fedavg", options, workload)
    assert isinstance(protocol, FlowerProtocol)
    shared_names = set(workload.shared(workload.initial))
    assert protocol.run.sent == shared_names and not shared_names & workload.private  # no user row ever sent
    worst = 0.0
    for round_index in range(ROUNDS + 1):
        for flower, engine in ((flower_shared, engine_shared), (flower_private, engine_private)):
            a, b = flower[round_index], engine[round_index]
            assert a.keys() == b.keys()
            diff = max((a[k] - b[k]).abs().max().item() for k in a)
            assert diff <= 1e-5, f"round {round_index}: Flower and in-engine models differ by {diff}"
            worst = max(worst, diff)
    moved = (flower_private[ROUNDS]["user"] - flower_private[0]["user"]).abs().max().item()
    assert moved > 1e-3  # the nodes really trained their rows, so agreement is not trivial
    print(f"\nrecommender: max |param diff| over rounds (shared and private) = {worst:.2e}")

    assert len(flower_records) == len(engine_records)
    one_case = 1.0 / int(workload.data.user_valid.sum())  # a flipped rank moves a mean by at most one case
    values = [abs(f.value - e.value) for f, e in zip(flower_records, engine_records, strict=True)]
    for f, e in zip(flower_records, engine_records, strict=True):
        assert (f.round, f.metric, f.sim_time_s, f.bytes_sent) == (e.round, e.metric, e.sim_time_s, e.bytes_sent)
        assert abs(f.value - e.value) <= one_case, (f, e)
    assert {"hr@10", "ndcg@10"} <= {r.metric for r in flower_records}
    print(f"recommender: max |metric diff| = {max(values):.2e}")


@pytest.mark.parametrize("kind", ["mf", "ncf"])
def test_flower_sends_only_touched_item_rows_as_in_engine_fedavg(kind):
    """``item_merge = "touched"``, half the devices per round: each node sends only the item rows its round
    touched (with their ids) and its dense parameters, never a user row; Flower's FedAvg, subclassed, merges
    each row over its senders. Item tables, dense parameters (NCF's MLP), every device's user rows, HR@10 /
    NDCG@10 and the bytes charged agree with in-engine FedAvg's sparse merge after every round."""
    workload = recommender_workload(kind, devices=DEVICES, users_per_device=2, rounds=ROUNDS)
    options: dict[str, Any] = {"weighted": True, "participation": 0.5, "item_merge": "touched"}
    protocol, flower_records, flower_shared, flower_private = _drive_recommender("flower", options, workload)
    _, engine_records, engine_shared, engine_private = _drive_recommender("fedavg", options, workload)
    _, _, dense_shared, _ = _drive_recommender("fedavg", options | {"item_merge": "dense"}, workload)
    assert isinstance(protocol, FlowerProtocol)
    diffs = []
    for round_index in range(ROUNDS + 1):
        shared = _max_diff(flower_shared[round_index], engine_shared[round_index])
        private = _max_diff(flower_private[round_index], engine_private[round_index])
        diffs.append(max(shared, private))
    print(f"\n{kind} touched: max |param diff| per round (shared and private) = {', '.join(f'{d:.1e}' for d in diffs)}")
    assert max(diffs) <= 1e-5, f"{kind}: Flower and in-engine sparse FedAvg differ by {diffs} (rounds 0..{ROUNDS})"
    away = _max_diff(flower_shared[ROUNDS], dense_shared[ROUNDS])
    assert away > 1e-4, f"{kind}: touched ended {away} from the dense merge: the agreement would not test it"

    assert len(flower_records) == len(engine_records)
    for f, e in zip(flower_records, engine_records, strict=True):
        assert (f.round, f.metric, f.sim_time_s, f.bytes_sent) == (e.round, e.metric, e.sim_time_s, e.bytes_sent)
        assert abs(f.value - e.value) <= 1e-5, (f, e)
    assert {"hr@10", "ndcg@10"} <= {r.metric for r in flower_records}
    sent = {r.round: r.bytes_sent for r in flower_records}
    print(
        f"{kind} touched: bytes_sent after rounds 1..{ROUNDS} (Flower = in-engine) = {[sent[r] for r in sorted(sent)]}"
    )

    # what the server received: per device, its touched rows and their ids, its dense parameters; no user row
    shared_names = set(workload.shared(workload.initial))
    model = workload.model
    tables = sorted(name for name, table in model.tables.items() if table == "item")
    expected_names = shared_names | {f"{name}{ROWS}" for name in tables}
    assert protocol.run.sent == expected_names and not protocol.run.sent & workload.private
    assert len(protocol.run.uploads) == ROUNDS
    for round_index, (trained, uploads) in enumerate(
        zip(protocol.run.trained, protocol.run.uploads, strict=True), start=1
    ):
        assert sorted(uploads) == trained
        ids = torch.tensor(trained)
        rows = touched_items(
            model, workload.data, ids, workload.train.local_epochs, seed=workload.seed, round_index=round_index
        )
        for position, device in enumerate(trained):
            width = int((rows[position] < workload.data.num_items).sum())
            assert 0 < width < workload.data.num_items  # some rows, not the whole table
            shapes = uploads[device]
            assert set(shapes) == expected_names, (round_index, device, shapes)
            for name in tables:
                assert shapes[name] == (width, *workload.initial[name].shape[1:])
                assert shapes[f"{name}{ROWS}"] == (width,)
            for name in shared_names - set(tables):
                assert shapes[name] == tuple(workload.initial[name].shape)


def test_merge_item_rows_averages_each_row_over_its_senders():
    """A row two devices sent is their weighted mean, a row one sent is that device's, a row none sent is
    kept; tables with a row of any shape (an MF bias row is a scalar)."""
    for width in ((), (2,)):
        current = np.arange(4 * int(np.prod(width)), dtype=np.float32).reshape(4, *width)
        a = np.full((2, *width), 10.0, dtype=np.float32)
        b = np.full((2, *width), 20.0, dtype=np.float32)
        merged = merge_item_rows(current, [(np.array([0, 2]), a), (np.array([2, 3]), b)], [1.0, 3.0])
        assert merged.dtype == current.dtype and merged.shape == current.shape
        np.testing.assert_allclose(merged[0], 10.0)
        np.testing.assert_array_equal(merged[1], current[1])
        np.testing.assert_allclose(merged[2], (10.0 + 3 * 20.0) / 4)
        np.testing.assert_allclose(merged[3], 20.0)


def test_touched_item_rows_with_another_strategy_are_refused_before_ray_starts(monkeypatch):
    import ray

    def unexpected(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", unexpected)
    protocol = make_protocol("flower", "fl", {"strategy": "FedAvgM"})
    with pytest.raises(ProtocolError, match=r"protocols.fl.item_merge: got 'touched'; only Flower's FedAvg merges"):
        protocol.setup(recommender_workload("mf", devices=DEVICES, rounds=ROUNDS))
    dense = with_client_lr(FlowerStrategy("FedAdam", item_merge="dense"), 0.1, "fl")  # FedOpt's eta_l keeps it
    assert row_tables(dense, ["item"], "fl") == ()


def test_flower_run_leaves_no_ray_process_and_restores_environment():
    before = {name: os.environ.get(name) for name in GUEST_ENVIRONMENT}
    _, (protocol, _, _), _, flower_s = _pair(True, 1.0)
    import ray

    assert not ray.is_initialized()
    assert {name: os.environ.get(name) for name in GUEST_ENVIRONMENT} == before
    deadline = time.monotonic() + 15
    while (left := ray_leftovers(protocol.run.ray_session_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)  # processes told to stop may take a moment to exit
    assert not left, "Ray processes left behind:\n" + "\n".join(left)
    print(
        f"\nflower setup (Ray start + {ROUNDS} rounds + shutdown): {flower_s:.1f} s; "
        f"the rounds alone {protocol.run.wall_s:.1f} s"
    )


def test_no_outbound_connection():
    """Every IP connect of a small Flower run, in every process it starts, goes to loopback."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed: install it (apt-get install -y strace) to check Flower stays offline")
    done = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT)], capture_output=True, text=True, check=False, cwd=ROOT, timeout=300
    )
    print(done.stdout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert "only loopback: OK" in done.stdout


def _check_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_no_outbound", CHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_connect_parser_flags_everything_outside_loopback():
    trace = "\n".join(
        [
            '101 connect(7, {sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            "101 connect(8, {sa_family=AF_INET6, sin6_port=htons(5), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = -1 EINPROGRESS',
            '102 connect(3, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
            '103 connect(23, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("169.254.169.254")}, 16 '
            "<unfinished ...>",
            '104 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}, 16) = 0',
            "105 connect(9, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            "106 connect(4, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            "107 connect(5, {sa_family=AF_INET, sin_port=htons(1), somethingnew}, 16) = 0",
            "108 <... connect resumed>)            = 0",
        ]
    )
    connects, unread = _check_script().parse_connects(trace)
    outside = sorted(c.address for c in connects if not c.loopback)
    assert outside == ["169.254.169.254", "2001:db8::1", "8.8.8.8"]
    assert len(connects) == 6
    assert len(unread) == 1 and "somethingnew" in unread[0]  # never silently skipped


def test_ray_start_failure_is_one_protocol_error_line(monkeypatch):
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to start the GCS server.\nSee /tmp/ray/session_x/logs for details")

    before = {name: os.environ.get(name) for name in GUEST_ENVIRONMENT}
    monkeypatch.setattr(ray, "init", refuse)
    protocol = make_protocol("flower", "baseline", {})
    with pytest.raises(ProtocolError) as caught:
        protocol.setup(_workload())
    message = str(caught.value)
    assert message.startswith("protocols.baseline: Flower's Ray backend could not start (Failed to start the GCS")
    assert "\n" not in message
    assert {name: os.environ.get(name) for name in GUEST_ENVIRONMENT} == before


def test_bad_participation_is_refused_before_anything_starts():
    with pytest.raises(ProtocolError, match=r"protocols.fl.participation: got 0"):
        make_protocol("flower", "fl", {"participation": 0})


# Flower strategy -> (its options, the in-engine fedavg options meant to give the same models every round).
# FedYogi and FedAdagrad are left at their defaults on both sides: Flower's defaults are the reference.
COUNTERPARTS: dict[str, tuple[dict[str, float], dict[str, Any]]] = {
    "FedProx": ({"proximal_mu": 0.5}, {"local": "fedprox", "mu": 0.5}),
    "FedAvgM": (
        {"server_learning_rate": 0.8, "server_momentum": 0.9},
        {"server_opt": "avgm", "server_lr": 0.8, "server_momentum": 0.9},
    ),
    "FedAdam": (
        {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3},
        {"server_opt": "adam", "server_lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-3},
    ),
    "FedYogi": ({}, {"server_opt": "yogi"}),
    "FedAdagrad": ({}, {"server_opt": "adagrad"}),
}
SAMPLED = {"weighted": True, "participation": 0.5}  # half the devices a round: the seeded sampling path


@cache
def _strategy_runs():
    """Every strategy of ``COUNTERPARTS`` in turn, in one Flower simulation (Ray starts once), with half the
    devices sampled per round, on the same server the in-engine protocols choose; and in-engine FedAvg."""
    workload = _workload()
    idle = np.array([choose_server(workload, NetworkModel(workload.graph), "auto", "flower")])
    strategies = [FlowerStrategy(name, flower) for name, (flower, _) in COUNTERPARTS.items()]
    started = time.perf_counter()
    runs = run_flower_strategies(workload, strategies, participation=SAMPLED["participation"], idle=idle)
    took = time.perf_counter() - started
    print(f"\n{len(strategies)} Flower strategies x {ROUNDS} rounds, one simulation (Ray start included): {took:.1f} s")
    return workload, idle, dict(zip(COUNTERPARTS, runs, strict=True)), _drive("fedavg", SAMPLED, workload)[2]


def _max_diff(a: ParamStack, b: ParamStack) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_flower_strategy_matches_its_in_engine_counterpart_every_round(name):
    """Flower's own strategy class and the in-engine fedavg with the counterpart options give the same
    global model after every round (max |param diff| <= 1e-5), and not FedAvg's."""
    workload, idle, runs, fedavg_models = _strategy_runs()
    _, engine_options = COUNTERPARTS[name]
    _, _, engine_models = _drive("fedavg", {**SAMPLED, **engine_options}, workload)
    run = runs[name]
    assert len(run.global_models) == len(engine_models) == ROUNDS + 1
    diffs = [_max_diff(run.global_models[r], engine_models[r]) for r in range(ROUNDS + 1)]
    print(f"\n{name}: max |param diff| per round = {', '.join(f'{d:.1e}' for d in diffs)}")
    assert max(diffs) <= 1e-5, f"{name}: Flower and in-engine differ by {diffs} (rounds 0..{ROUNDS})"
    away = _max_diff(run.global_models[ROUNDS], fedavg_models[ROUNDS])
    assert away > 1e-3, f"{name} ended {away} from FedAvg: the agreement would not test {name}"
    for round_index, trained in enumerate(run.trained, start=1):
        assert trained == participants(workload.seed, round_index, DEVICES, 0.5, idle).tolist()


def test_strategy_table_is_flowers_and_sampling_keeps_each_strategys_configure_train(monkeypatch):
    """Each name is Flower's class taking the options listed; with seeded sampling, the strategy's own
    ``configure_train`` still runs (FedProx sends ``proximal-mu``, FedAvgM and FedOpt keep the model)."""
    import inspect

    with warnings.catch_warnings():  # flwr's CLI dependency (typer) warns about click on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from flwr.app import ArrayRecord, ConfigRecord
        from flwr.serverapp import strategy as flower_strategies
        from flwr.supercore.task_identity import TaskIdentity

    for slot in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp's process has set when it builds messages
        monkeypatch.setattr(TaskIdentity, slot, 1)

    arrays = ArrayRecord({"w": torch.ones(2, 3)})
    for name, options in STRATEGY_OPTIONS.items():
        cls = getattr(flower_strategies, name)
        assert set(options) <= set(inspect.signature(cls.__init__).parameters), name
        plain = build_strategy(FlowerStrategy(name, dict.fromkeys(options, 0.5)), {})
        assert type(plain) is cls and all(getattr(plain, option) == 0.5 for option in options)
        sampled = build_strategy(FlowerStrategy(name), {}, lambda server_round: [11, 13 + server_round])
        assert isinstance(sampled, cls)
        messages = list(sampled.configure_train(2, arrays, ConfigRecord(), grid=None))
        assert [m.metadata.dst_node_id for m in messages] == [11, 15]
        config = messages[0].content.config_records["config"]
        assert config["server-round"] == 2
        assert ("proximal-mu" in config) == (name == "FedProx")
        if hasattr(sampled, "current_arrays"):  # FedAvgM and FedOpt: the model the pseudo-gradient starts from
            assert sampled.current_arrays is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "FedNope"}, r"protocols.fl.strategy: 'FedNope' is not allowed; must be 'FedAvg' \| 'FedProx'"),
        ({"strategy": "FedAvgM", "eta": 0.1}, r"protocols.fl.eta: got 0.1; Flower's FedAvgM does not take it "),
        ({"proximal_mu": 0.1}, r"protocols.fl.proximal_mu: got 0.1; Flower's FedAvg does not take it"),
        ({"strategy": "FedAdam", "beta_1": 1.0}, r"protocols.fl.beta_1: got 1.0; must be in \[0, 1\)"),
        ({"strategy": "FedProx", "proximal_mu": -1.0}, r"protocols.fl.proximal_mu: got -1.0; must be >= 0"),
        ({"item_merge": "rows"}, r"protocols.fl.item_merge: got 'rows'; choose one of: touched, dense"),
    ],
)
def test_bad_strategy_options_are_refused_before_anything_starts(options, message):
    with pytest.raises(EtreeError, match=message):
        make_protocol("flower", "fl", options)


def test_eta_l_other_than_the_clients_learning_rate_is_refused_before_ray_starts(monkeypatch):
    import ray

    def unexpected(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", unexpected)
    protocol = make_protocol("flower", "fl", {"strategy": "FedYogi", "eta_l": 0.5})
    with pytest.raises(ProtocolError, match=r"protocols.fl.eta_l: got 0.5, but the clients train with train.lr = 0.1"):
        protocol.setup(_workload())
