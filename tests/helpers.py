"""Workload builders shared by the protocol tests: sklearn digits, softmax regression, hand-made splits."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch

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
) -> Workload:
    """Softmax regression on (x, y, x_test, y_test) split over devices by ``parts``."""
    x, y, x_test, y_test = digits
    model = build_model("softmax", (64,), 10)
    return Workload(
        model=model,
        initial=init_params(model, 0),
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
