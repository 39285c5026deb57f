"""The protocol interface and the one loop that runs every protocol.

Like Flower's ``Strategy``: a protocol supplies a few hooks (build its
structure, run one round, say which models to evaluate); ``run_protocol`` owns
the round loop, the clock and byte accounting, and yields one ``Record`` per
metric. Nothing is written from inside the loop (the runner writes).

A round is one local epoch (``train.local_epochs``) of every active device,
whatever the protocol, so curves share an x-axis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import nn

from clients.evaluation import evaluate_models
from clients.fleet import FleetData
from clients.models import ParamStack, forward_flops, model_bytes
from clients.training import TrainConfig


@dataclass(frozen=True)
class Workload:
    """Everything a protocol run needs, shared read-only by all protocols of a run."""

    model: nn.Module
    initial: ParamStack  # one model, no leading device dimension
    data: FleetData
    x_test: torch.Tensor
    y_test: torch.Tensor
    graph: nx.Graph
    train: TrainConfig
    seed: int  # root of the protocol-level random streams
    input_shape: tuple[int, ...]
    num_classes: int
    rounds: int  # rounds the run will last (protocols that must plan ahead, e.g. Flower, read it)

    @property
    def devices(self) -> int:
        return self.data.devices

    @cached_property
    def message_bytes(self) -> int:
        """Size of one model on the wire."""
        return model_bytes(self.initial, stacked=False)

    @cached_property
    def epoch_flops(self) -> np.ndarray:
        """FLOPs of one local epoch per device: forward + backward ~ 3x forward, per sample."""
        per_sample = 3 * forward_flops(self.model, self.input_shape)
        return per_sample * self.data.counts.numpy().astype(np.float64) * self.train.local_epochs


@dataclass(frozen=True)
class RoundCost:
    """What one round cost on the simulated network."""

    duration_s: float
    bytes_sent: int
    messages: int
    events: Mapping[str, float] | None = None  # extra per-round facts, e.g. {"root_aggregations": 1}


@dataclass(frozen=True)
class Record:
    """One row of ``metrics.csv``."""

    protocol: str
    round: int
    sim_time_s: float
    bytes_sent: int
    metric: str
    value: float


class Protocol(ABC):
    """A way of moving models between devices. Subclasses implement the hooks, not the loop."""

    def __init__(self, label: str) -> None:
        self.label = label

    @abstractmethod
    def setup(self, workload: Workload) -> None:
        """Build the structure (tree, overlay) and the initial model state."""

    @abstractmethod
    def run_round(self, round_index: int) -> RoundCost:
        """Train every active device once and move models; round_index starts at 1."""

    @abstractmethod
    def evaluation_models(self) -> ParamStack:
        """The model(s) whose test accuracy this protocol reports, as a stack [K, ...]."""

    def evaluate(self, workload: Workload) -> dict[str, float]:
        """Metrics of the evaluation models: mean accuracy and loss, spread when K > 1."""
        accuracy, loss = evaluate_models(workload.model, self.evaluation_models(), workload.x_test, workload.y_test)
        metrics = {"accuracy": float(accuracy.mean()), "loss": float(loss.mean())}
        if len(accuracy) > 1:
            metrics["accuracy_std"] = float(accuracy.std())
        return metrics

    def structure(self) -> dict[str, Any] | None:
        """A JSON-ready description of the structure built in ``setup`` (None if there is none)."""
        return None


def run_protocol(protocol: Protocol, workload: Workload, *, rounds: int, eval_every: int) -> Iterator[Record]:
    """Run ``rounds`` rounds, yielding records at round 0, every ``eval_every`` rounds and the last."""
    protocol.setup(workload)
    clock, sent = 0.0, 0
    counters: dict[str, float] = {}

    def snapshot(round_index: int) -> Iterator[Record]:
        metrics = protocol.evaluate(workload) | counters
        for metric in sorted(metrics):
            yield Record(protocol.label, round_index, clock, sent, metric, metrics[metric])

    yield from snapshot(0)
    for round_index in range(1, rounds + 1):
        cost = protocol.run_round(round_index)
        clock += cost.duration_s
        sent += cost.bytes_sent
        for name, value in (cost.events or {}).items():
            counters[name] = counters.get(name, 0.0) + value
        if round_index % eval_every == 0 or round_index == rounds:
            yield from snapshot(round_index)
