"""The protocol interface and the one loop that runs every protocol.

Like Flower's ``Strategy``: a protocol supplies a few hooks (build its
structure, run one round, say which models to evaluate); ``run_protocol`` owns
the round loop, the clock and byte accounting, and yields one ``Record`` per
metric. Nothing is written from inside the loop (the runner writes).

The clock is one ``SimClock`` (a ``simpy.Environment``) per protocol run,
handed to the protocol before ``setup`` as ``protocol.clock``. A protocol that
simulates its message flow runs its round on it (and says so with
``RoundCost.clocked``); for any other the loop advances the clock by the
round's duration. ``sim_time_s`` is always the clock's ``now``. Crashes of
``[network] crash`` fire on that clock and become ``crash`` metric rows (value:
the node id), as do failovers (``failover``: the promoted node).

A round is one local epoch (``train.local_epochs``) of every active device,
whatever the protocol, so curves share an x-axis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from clients.classification.evaluation import evaluate_models
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.metrics import DeviceModels, evaluate_devices, split_private
from etree.engine.workload import Workload
from etree.network.clock import SimClock
from etree.network.links import LinkLoad


@dataclass(frozen=True)
class RoundCost:
    """What one round cost on the simulated network."""

    duration_s: float
    bytes_sent: int
    messages: int
    events: Mapping[str, float] | None = None  # extra per-round facts, e.g. {"root_aggregations": 1}
    clocked: bool = False  # the protocol ran the round on its clock (the loop must not advance it again)


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

    @property
    def clock(self) -> SimClock:
        """The simulated clock of the current run (``run_protocol`` sets a fresh one per run)."""
        clock = getattr(self, "_clock", None)
        if clock is None:
            clock = self._clock = SimClock(getattr(getattr(self, "workload", None), "network", None))
        return clock

    @clock.setter
    def clock(self, clock: SimClock) -> None:
        self._clock = clock

    @abstractmethod
    def setup(self, workload: Workload) -> None:
        """Build the structure (tree, overlay) and the initial model state."""

    @abstractmethod
    def run_round(self, round_index: int) -> RoundCost:
        """Train every active device once and move models; round_index starts at 1."""

    @abstractmethod
    def evaluation_models(self) -> ParamStack:
        """The model(s) whose test accuracy this protocol reports, as a stack [K, ...]."""

    def device_models(self) -> DeviceModels:
        """For personalised models (recommenders): the shared model each evaluated device holds
        and its private rows. Protocols that run recommender workloads override it."""
        raise NotImplementedError(f"protocol {self.label!r} does not evaluate models with private parameters")

    def evaluate(self, workload: Workload) -> dict[str, float]:
        """Metrics of the evaluation models: mean accuracy and loss, spread when K > 1;
        for a recommender, HR@10 and NDCG@10 of every evaluated device on its own users."""
        if workload.recommender:
            assert isinstance(workload.data, InteractionFleet)
            return evaluate_devices(workload.model, self.device_models(), workload.data)
        accuracy, loss = evaluate_models(workload.model, self.evaluation_models(), workload.x_test, workload.y_test)
        metrics = {"accuracy": float(accuracy.mean()), "loss": float(loss.mean())}
        if len(accuracy) > 1:
            metrics["accuracy_std"] = float(accuracy.std())
        return metrics

    def structure(self) -> dict[str, Any] | None:
        """A JSON-ready description of the structure built in ``setup`` (None if there is none)."""
        return None

    def resolve_node(self, node: str | int) -> int | None:
        """The graph node a crash names: ids are themselves; roles (``server``, ``root``, ``head``)
        mean nothing to a protocol without aggregators (None: the crash does not concern it)."""
        return node if isinstance(node, int) else None

    def link_loads(self) -> LinkLoad | None:
        """Messages and bytes per topology link over the run (None if the protocol does not track them)."""
        return None


def own_models(params: ParamStack, devices: torch.Tensor, private: frozenset[str]) -> DeviceModels:
    """``DeviceModels`` of devices that each hold their own full model (row i of ``params`` is ``devices[i]``)."""
    shared, mine = split_private(params, private)
    return DeviceModels(shared, torch.arange(len(devices)), mine, devices)


