"""The Ray backend trains exactly what the local backend trains, stays on loopback and cleans up.

Ray starts once for the module (15-30 s on 2 CPUs): one ``RayTrainer`` with 2
workers serves every test, lent to ``run_spec`` without being closed, and the
last test closes it and looks for leftover processes. The strace check starts
its own Ray in a subprocess.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ray_leftovers, recommender_workload

import experiments.runner as runner
from clients.classification.models import build_model
from clients.errors import ClientsError
from clients.params import init_params, replicate
from clients.train_config import TrainConfig
from etree.backends.local import LocalTrainer, local_train
from etree.backends.ray import RayTrainer, shard_bounds
from etree.backends.ray_guest import GUEST_ENVIRONMENT
from etree.core.errors import ProtocolError
from etree.engine import Record, Workload, run_protocol
from etree.protocols import make_protocol
from experiments.runner import build_workload, run_spec
from experiments.spec import Spec, SpecError, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = ROOT / "benchmarks" / "check_no_outbound.py"


def _spec(backend: dict[str, Any]) -> Spec:
    """31 devices (two shards of 16 and 15), digits, softmax, 3 rounds of E-Tree, FedAvg and gossip."""
    return spec_from_dict(
        {
            "name": "ray",
            "seed": 4,
            "rounds": 3,
            "topology": {"kind": "random_geometric", "devices": 31},
            "data": {"dataset": "digits", "partition": "pathological", "classes_per_device": 3},
            "model": {"kind": "softmax"},
            "train": {"lr": 0.05, "batch_size": 4},
            "backend": backend,
            "protocols": [
                {"name": "etree", "groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 2},
                {"name": "fedavg", "participation": 0.5},  # shards of a changing subset of devices
                {"name": "gossip"},
            ],
        }
    )


class _Borrowed:
    """The module's Ray trainer lent to one ``run_spec``: calls and ``close`` are counted, Ray stays up."""

    def __init__(self, trainer: RayTrainer) -> None:
        self.trainer = trainer
        self.calls = 0
        self.closed = 0

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.trainer.train(*args, **kwargs)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(scope="module")
def environment_before() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in GUEST_ENVIRONMENT}


@pytest.fixture(scope="module")
def trainer(environment_before: dict[str, str | None]) -> Iterator[RayTrainer]:
    trainer = RayTrainer(workers=2)
    yield trainer
    trainer.close()


@pytest.fixture(scope="module")
def runs(trainer: RayTrainer) -> tuple[list[Record], list[Record], _Borrowed, float, float]:
    """The same spec on the local backend and on the Ray one (Ray's start timed apart)."""
    started = time.perf_counter()
    local = run_spec(_spec({"kind": "local"})).records
    local_s = time.perf_counter() - started
    _ensure_started(trainer)
    borrowed = _Borrowed(trainer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "make_trainer", lambda kind, **_: borrowed if kind == "ray" else LocalTrainer())
        started = time.perf_counter()
        on_ray = run_spec(_spec({"kind": "ray", "workers": 2})).records
        ray_s = time.perf_counter() - started
    return local, on_ray, borrowed, local_s, ray_s


def _ensure_started(trainer: RayTrainer) -> None:
    """Start the module's Ray (one tiny training call) if no test has yet."""
    workload = build_workload(_spec({"kind": "local"}))[0]
    trainer.train(
        workload.model,
        replicate(workload.initial, 2),
        workload.data,
        torch.arange(2),
        workload.train,
        seed=0,
        round_index=1,
    )


def test_shards_are_contiguous_balanced_and_cover_everything():
    for count in range(0, 12):
        for shards in range(1, 5):
            bounds = shard_bounds(count, shards)
            assert len(bounds) == min(count, shards)
            assert [b[0] for b in bounds[1:]] == [b[1] for b in bounds[:-1]]  # contiguous, in order
            assert (bounds[0][0], bounds[-1][1]) == (0, count) if bounds else count == 0
            sizes = [stop - start for start, stop in bounds]
            assert all(sizes) and max(sizes, default=0) - min(sizes, default=0) <= 1


def test_ray_backend_gives_the_local_metrics(runs):
    """Every record of E-Tree (KMA pre-training included), FedAvg and gossip is the same, exactly."""
    local, on_ray, borrowed, local_s, ray_s = runs
    assert borrowed.calls > 0  # the protocols really trained through the Ray backend
    assert {r.protocol for r in local} == {"etree", "fedavg", "gossip"}
    assert len(on_ray) == len(local)
    for a, b in zip(on_ray, local, strict=True):
        assert a == b, (a, b)
    accuracy = [r.value for r in local if r.metric == "accuracy" and r.protocol == "fedavg"]
    assert accuracy[-1] > accuracy[0] + 0.1  # training moved the models: agreement is not trivial
    print(
        f"\nrun_spec, 31 devices, 3 protocols, 3 rounds: local {local_s:.1f} s, Ray (2 workers, started) {ray_s:.1f} s"
    )


def test_run_spec_closes_its_backend_even_when_a_run_fails(runs, monkeypatch):
    _, _, borrowed, _, _ = runs
    assert borrowed.closed == 1

    class Failing(LocalTrainer):
        closed = 0

        def train(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a worker died")

        def close(self) -> None:
            Failing.closed += 1

    monkeypatch.setattr(runner, "make_trainer", lambda kind, **_: Failing())
    with pytest.raises(RuntimeError, match="a worker died"):
        run_spec(_spec({"kind": "local"}))
    assert Failing.closed == 1


def _recommender_workload(trainer: Any) -> Workload:
    """12 devices of 2 users each, matrix factorisation (private user rows), on ``trainer``."""
    return dataclasses.replace(recommender_workload("mf"), trainer=trainer)


def test_recommender_runs_match_the_local_backend(trainer):
    """Interaction data (negatives sampled per device) and private rows go through the same path."""
    records = {}
    for name, backend in (("local", LocalTrainer()), ("ray", trainer)):
        workload = _recommender_workload(backend)
        records[name] = list(run_protocol(make_protocol("fedavg", "fedavg", {}), workload, rounds=3, eval_every=1))
    assert records["ray"] == records["local"]
    assert {r.metric for r in records["ray"]} >= {"hr@10", "ndcg@10"}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_sharding_changes_nothing_a_device_computes(trainer, kind):
    """Hand-written dense steps (mlp) and vmap + autograd (cnn), on a scattered subset of 7 devices.

    Equal to float32 rounding, not bit for bit: a shard's batched kernels see fewer devices, and
    BLAS may block a smaller batch differently (measured: at most 3e-8 here)."""
    workload = build_workload(_spec({"kind": "local"}))[0]
    model = build_model(kind, (64,), 10)
    stack = replicate(init_params(model, 2), 7)
    ids = torch.tensor([0, 3, 4, 9, 17, 22, 30])
    config = TrainConfig(lr=0.05, local_epochs=2, batch_size=3)
    here = local_train(model, stack, workload.data, ids, config, seed=5, round_index=2)
    there = trainer.train(model, stack, workload.data, ids, config, seed=5, round_index=2)
    assert here.keys() == there.keys()
    assert all(torch.allclose(here[name], there[name], rtol=0, atol=1e-6) for name in here)


def test_a_second_ray_in_the_same_process_is_one_clear_error(trainer):
    _ensure_started(trainer)
    workload = _recommender_workload(RayTrainer(workers=1))
    with pytest.raises(ProtocolError) as caught:
        list(run_protocol(make_protocol("fedavg", "fedavg", {}), workload, rounds=1, eval_every=1))
    assert str(caught.value).startswith("backend: Ray is already running in this process;")
    joining = RayTrainer(workers=1, address="auto")
    with pytest.raises(ProtocolError, match=r"^backend.address: Ray is already initialised"):
        joining.train(
            workload.model, workload.initial, workload.data, torch.arange(1), workload.train, seed=0, round_index=1
        )


def test_a_worker_error_is_raised_as_the_local_backend_raises_it(trainer):
    workload = _recommender_workload(trainer)
    softmax = build_model("softmax", (64,), 10)
    stack = replicate(init_params(softmax, 0), 2)
    with pytest.raises(ClientsError) as local:
        local_train(softmax, stack, workload.data, torch.arange(2), workload.train, seed=0, round_index=1)
    with pytest.raises(ClientsError) as remote:
        trainer.train(softmax, stack, workload.data, torch.arange(2), workload.train, seed=0, round_index=1)
    assert str(remote.value) == str(local.value)
    assert str(remote.value).startswith("model.kind: interaction data needs a recommender model")


def test_closing_leaves_no_ray_process_and_restores_environment(trainer, environment_before):
    """Last of the module's Ray tests: it stops the module's Ray."""
    _ensure_started(trainer)
    import ray

    session = trainer.session_dir
    assert session and ray.is_initialized()
    trainer.close()
    trainer.close()  # idempotent
    assert not ray.is_initialized()
    assert {name: os.environ.get(name) for name in GUEST_ENVIRONMENT} == environment_before
    deadline = time.monotonic() + 15
    while (left := ray_leftovers(session)) and time.monotonic() < deadline:
        time.sleep(0.5)  # processes told to stop may take a moment to exit
    assert not left, "Ray processes left behind:\n" + "\n".join(left)


def test_no_outbound_connection():
    """Every IP connect of a small run on the Ray backend, in every process it starts, goes to loopback."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed: install it (apt-get install -y strace) to check Ray stays offline")
    done = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), "--workload", "ray"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    print(done.stdout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert "only loopback: OK" in done.stdout


# -- the [backend] table ------------------------------------------------------------------------
def test_backend_is_saved_with_the_resolved_spec():
    spec = _spec({"kind": "ray", "workers": 3, "address": "auto"})
    assert spec.to_dict()["backend"] == {"kind": "ray", "workers": 3, "address": "auto"}
    assert spec_from_dict(spec.to_dict()) == spec
    assert _spec({}).to_dict()["backend"] == {"kind": "local", "workers": 2, "address": ""}


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ({"kind": "dask"}, "backend.kind: got 'dask'; choose one of: local, ray"),
        ({"kind": "ray", "workers": 0}, "backend.workers: got 0; must be >= 1"),
        ({"kind": "ray", "workers": "2"}, "backend.workers: expected int"),
        ({"kind": "ray", "workers": True}, "backend.workers: expected int"),
        ({"kind": "ray", "threads": 2}, "backend.threads: unknown key; allowed: address, kind, workers"),
        ({"address": "auto"}, "backend.address: got 'auto'; only kind = \"ray\" uses it"),
        ({"kind": "ray", "address": 6379}, "backend.address: expected str"),
        ([1, 2], "backend: expected a table"),
    ],
)
def test_bad_backend_tables_name_the_field(backend, field):
    with pytest.raises(SpecError) as caught:
        _spec(backend)
    assert str(caught.value).startswith(field)
    assert "\n" not in str(caught.value)


def test_flower_is_refused_on_the_ray_backend():
    raw = _spec({"kind": "ray"}).to_dict()
    raw["protocols"] = [{"name": "flower"}]
    with pytest.raises(SpecError, match=r'^backend.kind: "ray" cannot run the flower protocol'):
        spec_from_dict(raw)
