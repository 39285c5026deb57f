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
whatever the protocol, so curves share an x-axis (a ``[[protocols]]`` table's
own ``train`` changes that protocol's epoch, not this rule).

Metrics score what devices hold (``evaluate``): ``accuracy`` is the mean over
devices of the test accuracy of the model each device holds at that moment.

A checkpoint holds what ``state_dict`` names (plain data: tensors, arrays, JSON
values); a resumed run makes the protocol afresh and calls ``load_state_dict``
instead of ``setup`` (``etree.engine.checkpoint``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
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

    workload: Workload  # set by ``setup``, or by ``run_protocol`` before ``load_state_dict``

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
        """The distinct models the (evaluated) devices hold right now, as a stack [K, ...]; how many
        devices hold each row is ``holders()``. A metric scores only models that devices hold."""

    def holders(self) -> torch.Tensor | None:
        """How many evaluated devices hold each row of ``evaluation_models()`` (None: one each)."""
        return None

    def device_models(self) -> DeviceModels:
        """For personalised models (recommenders): the shared model each evaluated device holds
        and its private rows. Protocols that run recommender workloads override it."""
        raise NotImplementedError(f"protocol {self.label!r} does not evaluate models with private parameters")

    def evaluate(self, workload: Workload) -> dict[str, float]:
        """Metrics of the models devices hold, each device counted once (batched: every distinct model
        is evaluated once and weighted by its ``holders``): ``accuracy`` and ``loss`` on the test set,
        ``accuracy_std`` their spread over devices, ``validation_accuracy`` on the validation split
        (when the run has one); for a recommender, HR@10 and NDCG@10 of every evaluated device on
        its own users."""
        if workload.recommender:
            assert isinstance(workload.data, InteractionFleet)
            return evaluate_devices(workload.model, self.device_models(), workload.data)
        models, holders = self.evaluation_models(), self.holders()
        metrics = held_metrics(workload.model, models, holders, workload.x_test, workload.y_test)
        if len(workload.y_val):
            validation = held_metrics(workload.model, models, holders, workload.x_val, workload.y_val)
            metrics["validation_accuracy"] = validation["accuracy"]
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

    def state_dict(self) -> dict[str, Any]:
        """Everything the run carries from one round to the next, as plain data: tensors, numpy arrays
        and JSON values (``etree.engine.checkpoint``). It is what a checkpoint saves, so it names its
        state (model stacks, late messages, the tree as failover changed it, generator states as
        ``rng.bit_generator.state``); configuration set by the constructor, and what ``setup``
        rebuilds identically from the workload, are not state. The loop copies what it gets.
        A protocol that does not override it is not checkpointed between rounds."""
        raise NotImplementedError(f"protocol {self.label!r} has no state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s state, in place of ``setup``: on a freshly made protocol of
        the same spec, after ``run_protocol`` has set ``workload`` and ``clock``; the rounds that follow
        must yield exactly what they yielded after ``state_dict()``. A state that does not fit the
        workload is refused with ``etree.engine.checkpoint.CheckpointError`` (its checks name the field)."""
        raise NotImplementedError(f"protocol {self.label!r} has no load_state_dict")


def held_metrics(
    model: torch.nn.Module, models: ParamStack, holders: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Mean over devices of the accuracy and loss of the model each holds (``holders[k]`` devices hold
    row k; None: one each), and the accuracy's spread over devices (``accuracy_std``)."""
    accuracy, loss = evaluate_models(model, models, x, y)
    weight = np.ones(len(accuracy)) if holders is None else holders.numpy().astype(np.float64)
    weight = weight / weight.sum()
    mean = float(weight @ accuracy)
    spread = float(np.sqrt(max(0.0, float(weight @ (accuracy - mean) ** 2))))
    return {"accuracy": mean, "loss": float(weight @ loss), "accuracy_std": spread}


def own_models(params: ParamStack, devices: torch.Tensor, private: frozenset[str]) -> DeviceModels:
    """``DeviceModels`` of devices that each hold their own full model (row i of ``params`` is ``devices[i]``)."""
    shared, mine = split_private(params, private)
    return DeviceModels(shared, torch.arange(len(devices)), mine, devices)
