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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import nn

from clients.evaluation import evaluate_models
from clients.fleet import FleetData
from clients.interactions import InteractionFleet
from clients.models import ParamStack, forward_flops, model_bytes
from clients.recommenders import DeviceModels, Recommender, evaluate_devices, split_private
from clients.training import TrainConfig
from etree.backends import LocalTrainer, Trainer
from etree.checkpoint import RunSnapshot, restore_snapshot, take_snapshot
from etree.clock import SimClock
from etree.conditions import NetworkConditions
from etree.links import LinkLoad


@dataclass(frozen=True)
class Workload:
    """Everything a protocol run needs, shared read-only by all protocols of a run.

    ``private`` names parameters that never leave their device (a recommender's
    user embeddings): protocols train them but never send, average or report
    them, and ``message_bytes`` counts only the others.

    ``trainer`` is where local training runs (``[backend]``: this process, or
    Ray workers); protocols train through ``train_devices``, never by calling
    ``local_train`` themselves, so the backend changes no protocol code.
    """

    model: nn.Module
    initial: ParamStack  # one model, no leading device dimension
    data: FleetData | InteractionFleet
    x_test: torch.Tensor
    y_test: torch.Tensor
    graph: nx.Graph
    train: TrainConfig
    seed: int  # root of the protocol-level random streams
    input_shape: tuple[int, ...]
    num_classes: int
    rounds: int  # rounds the run will last (protocols that must plan ahead, e.g. Flower, read it)
    network: NetworkConditions = field(default_factory=NetworkConditions)  # [network] of the spec: timing, faults
    private: frozenset[str] = frozenset()  # parameters that never leave their device
    trainer: Trainer = field(default_factory=LocalTrainer)  # the training backend (etree.backends)

    @property
    def devices(self) -> int:
        return self.data.devices

    @property
    def recommender(self) -> bool:
        """Interaction data and a recommender model: metrics are HR@10 and NDCG@10."""
        return isinstance(self.data, InteractionFleet)

    def train_devices(
        self,
        params: ParamStack,
        device_ids: torch.Tensor,
        round_index: int,
        *,
        config: TrainConfig | None = None,
        data: FleetData | InteractionFleet | None = None,
    ) -> ParamStack:
        """Local training of the devices ``device_ids`` (row i of ``params``) on the run's backend:
        ``config`` (default ``self.train``) on ``data`` (default the fleet's), seeded by ``self.seed``
        and ``round_index``. Returns new tensors; ``params`` is not modified."""
        return self.trainer.train(
            self.model,
            params,
            self.data if data is None else data,
            device_ids,
            self.train if config is None else config,
            seed=self.seed,
            round_index=round_index,
        )

    @cached_property
    def message_bytes(self) -> int:
        """Size of one model on the wire: its shared parameters (private ones never travel)."""
        return model_bytes(self.shared(self.initial), stacked=False)

    def shared(self, params: ParamStack) -> ParamStack:
        """The parameters of a model or stack that may leave a device."""
        return {name: tensor for name, tensor in params.items() if name not in self.private}

    @cached_property
    def wire_bytes(self) -> int:
        """Size of one model message on the wire, after ``[network] compression``."""
        return max(1, round(self.message_bytes / self.network.compression))

    @cached_property
    def epoch_flops(self) -> np.ndarray:
        """FLOPs of one local epoch per device: forward + backward ~ 3x forward, per sample
        (for a recommender, per scored pair: the positive and its sampled negatives)."""
        if isinstance(self.model, Recommender):
            per_sample = 3 * self.model.pair_flops() * (1 + self.model.negatives)
        else:
            per_sample = 3 * forward_flops(self.model, self.input_shape)
        return per_sample * self.data.counts.numpy().astype(np.float64) * self.train.local_epochs


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


def run_protocol(
    protocol: Protocol,
    workload: Workload,
    *,
    rounds: int,
    eval_every: int,
    resume: RunSnapshot | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[RunSnapshot], None] | None = None,
) -> Iterator[Record]:
    """Run ``rounds`` rounds, yielding records at round 0, every ``eval_every`` rounds and the last,
    and one row per crash or failover, in the round it happened.

    Every ``checkpoint_every`` rounds (0: never; never after the last round), once the round's
    records are yielded, ``on_checkpoint`` receives a snapshot of the run. ``resume`` continues a
    snapshot taken of the same spec: ``protocol`` is freshly made and its ``setup`` is not run
    again; the rounds after the snapshot yield exactly what the uninterrupted run yielded.
    """
    if resume is None:
        clock = SimClock(workload.network)
        protocol.clock = clock
        protocol.setup(workload)
        clock.schedule_crashes(workload.network.crashes_for(protocol.label), protocol.resolve_node)
        first, sent, counters = 1, 0, {}
    else:
        clock = restore_snapshot(protocol, workload, resume)
        first, sent, counters = resume.round_index + 1, resume.sent, dict(resume.counters)

    def snapshot(round_index: int) -> Iterator[Record]:
        metrics = protocol.evaluate(workload) | counters
        for metric in sorted(metrics):
            yield Record(protocol.label, round_index, clock.now, sent, metric, metrics[metric])

    if resume is None:
        yield from snapshot(0)
    for round_index in range(first, rounds + 1):
        cost = protocol.run_round(round_index)
        if not cost.clocked and workload.network.timing:
            clock.advance(cost.duration_s)
        sent += cost.bytes_sent
        for name, value in (cost.events or {}).items():
            counters[name] = counters.get(name, 0.0) + value
        for at, kind, node in clock.take_events():
            yield Record(protocol.label, round_index, at, sent, kind, float(node))
        if round_index % eval_every == 0 or round_index == rounds:
            yield from snapshot(round_index)
        due = checkpoint_every > 0 and round_index % checkpoint_every == 0 and round_index < rounds
        if on_checkpoint is not None and due:
            on_checkpoint(take_snapshot(protocol, workload, round_index, sent, counters))
