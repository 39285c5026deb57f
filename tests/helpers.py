"""Workload builders shared by the protocol tests: sklearn digits, softmax regression, hand-made splits."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from sklearn.datasets import load_digits

from clients.fleet import pack_fleet
from clients.models import build_model, init_params
from clients.training import TrainConfig
from etree.conditions import NetworkConditions
from etree.protocol import Workload

Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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
) -> Workload:
    """Softmax regression on (x, y, x_test, y_test) split over devices by ``parts``."""
    x, y, x_test, y_test = digits
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
