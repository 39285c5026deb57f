"""Shared by the tests: specs built from the tiny spec, workload builders (sklearn digits, softmax
regression, hand-made splits) and a check that Ray left no process behind (Flower and Ray-backend tests)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from sklearn.datasets import load_digits

from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model
from clients.params import init_params
from clients.recommendation.interactions import Interactions, interactions_from_table, pack_interactions
from clients.recommendation.models import build_recommender, init_recommender
from clients.train_config import TrainConfig
from etree.engine.workload import Workload
from etree.network.conditions import NetworkConditions
from topologies import build_topology

Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def tiny_spec_with(**changes: Any) -> dict[str, Any]:
    """conftest's ``TINY_SPEC`` as a raw spec dict, changed: a table given as a dict updates that
    table's keys, anything else (scalars, ``protocols``) replaces the value."""
    from conftest import TINY_SPEC

    raw = tomllib.loads(TINY_SPEC)
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    return raw


def softmax_workload(
    digits: Digits,
    parts: Sequence[np.ndarray],
    graph: nx.Graph,
    *,
    lr: float = 0.05,
    batch_size: int = 4,
    seed: int = 1,
    rounds: int = 15,
    network: NetworkConditions | None = None,
    init_seed: int = 0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> Workload:
    """Softmax regression on (x, y, x_test, y_test) split over devices by ``parts``.

    ``validation`` (what KMA scores on) defaults to a seeded sample of 200 of the devices' own
    training rows: never test rows, though not disjoint from the devices' data as the runner's
    carved split is (tests of that split build their workloads with the runner)."""
    x, y, x_test, y_test = digits
    if validation is None:
        held = np.concatenate(list(parts))
        rows = np.sort(np.random.default_rng(seed).choice(held, size=min(200, len(held)), replace=False))
        validation = (x[rows], y[rows])
    model = build_model("softmax", (64,), 10)
    return Workload(
        model=model,
        initial=init_params(model, init_seed),
        data=pack_fleet(x, y, list(parts)),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        graph=graph,
        train=TrainConfig(lr=lr, local_epochs=1, batch_size=batch_size),
        seed=seed,
        input_shape=(64,),
        num_classes=10,
        rounds=rounds,
        network=network or NetworkConditions(),
        x_val=torch.from_numpy(validation[0]),
        y_val=torch.from_numpy(validation[1]),
    )


def label_sharded_workload(devices: int, seed: int, *, graph: nx.Graph, lr: float = 0.05, rounds: int = 3) -> Workload:
    """Digits sorted by label and cut into contiguous shards (1-2 classes per device): strongly non-IID."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:300], order[300:]
    train = train[np.argsort(y[train], kind="stable")]
    digits = (x, y, x[test], y[test])
    return softmax_workload(
        digits, np.array_split(train, devices), graph, lr=lr, batch_size=16, seed=seed, rounds=rounds, init_seed=seed
    )


def ray_leftovers(session_dir: str) -> list[str]:
    """Live processes of that Ray session: carrying its folder in their command line, or Ray
    workers (``ray::...``) and daemons descending from this process. Zombies are dead, not counted."""
    session = os.path.basename(session_dir)
    assert session, "ray_leftovers needs the run's Ray session folder (an empty name matches every process)"
    ray_names = ("ray::", "gcs_server", "raylet", "dashboard.py", "log_monitor.py", "monitor.py")
    parents: dict[int, int] = {}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited while we looked
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state == "Z":
            continue
        pid = int(entry.name)
        parents[pid] = int(ppid)
        if session in cmdline or any(name in cmdline for name in ray_names):
            found[pid] = cmdline
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [f"{pid}: {cmd[:120]}" for pid, cmd in sorted(found.items()) if session in cmd or descends(pid)]


def synthetic_interactions(users: int = 24, items: int = 40, per_user: int = 8, seed: int = 0) -> Interactions:
    """Random implicit feedback, ``per_user`` distinct items per user, split leave-last-out (5 negatives)."""
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(users), per_user)
    i = np.concatenate([rng.choice(items, per_user, replace=False) for _ in range(users)])
    return interactions_from_table("synthetic", u, i, rng.random(len(u)), seed=seed, test_negatives=5)


def recommender_workload(kind: str, devices: int = 12, users_per_device: int = 2, rounds: int = 3) -> Workload:
    """A small recommender fleet on synthetic interactions: ``users_per_device`` users per device."""
    data = synthetic_interactions(users=devices * users_per_device)
    parts = [np.arange(d * users_per_device, (d + 1) * users_per_device) for d in range(devices)]
    fleet = pack_interactions(data, parts)
    model = build_recommender(kind, fleet.slots, data.num_items)
    return Workload(
        model=model,
        initial=init_recommender(model, 1),
        data=fleet,
        x_test=torch.zeros(0, 2),
        y_test=torch.zeros(0, dtype=torch.int64),
        graph=build_topology("random_geometric", devices, seed=3),
        train=TrainConfig(lr=0.05, local_epochs=1, batch_size=4),
        seed=11,
        input_shape=(2,),
        num_classes=data.num_items,
        rounds=rounds,
        private=model.private,
    )
