"""A design's simulated time and bytes, round by round, computed exactly without training it.

A synchronous tree round's duration and messages depend on the tree, on who takes part (the
seeded sample, dropout, crashes) and on compute speeds and the network, never on the model's
numbers (``etree.trees.timing``: the run's simpy clock decides *when* and *whether*, the tensors
*what*). So :class:`CostPredictor` runs the protocol itself, on the run's own clock, with a
trainer that does not train: the same rounds, the same ``TreeTiming``, the same byte counts as a
real run, at the cost of the timing engine alone (``tests/test_design.py`` checks that they equal
a real run's, round by round, faults included: the clock decides crashes and dropouts). Building
the tree is part of the design and is not skipped: KMA still pre-trains (Algorithm 1, lines 2-3),
and :class:`PretrainCache` makes that once per workload, since every design of a search
pre-trains the same devices from the same model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from clients.classification.fleet import FleetData
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.train_config import TrainConfig
from etree.backends.base import Trainer
from etree.engine.loop import prepare_protocol
from etree.engine.workload import Workload
from etree.protocols import make_protocol
from etree.trees.kma import PRETRAIN_ROUND
from experiments.runner import protocol_workload
from experiments.spec import ProtocolSpec

PretrainKey = tuple[int, TrainConfig, int, tuple[int, ...]]


class PretrainCache:
    """A trainer that trains as ``inner`` does and keeps KMA's pre-training result: the same
    devices trained from the same initial model with the same settings and seed give the same
    models, so a search pre-trains once, not once per design."""

    def __init__(self, inner: Trainer) -> None:
        self.inner = inner
        self._kept: dict[PretrainKey, ParamStack] = {}

    def train(
        self,
        model: nn.Module,
        params: ParamStack,
        data: FleetData | InteractionFleet,
        device_ids: torch.Tensor,
        config: TrainConfig,
        *,
        seed: int,
        round_index: int,
        **extra: Any,
    ) -> ParamStack:
        """``inner``'s training; pre-training (no extra arguments) is kept and handed out again."""
        if round_index != PRETRAIN_ROUND or any(value is not None for value in extra.values()):
            return self.inner.train(
                model, params, data, device_ids, config, seed=seed, round_index=round_index, **extra
            )
        key = (seed, config, id(data), tuple(device_ids.tolist()))
        if key not in self._kept:
            self._kept[key] = self.inner.train(
                model, params, data, device_ids, config, seed=seed, round_index=round_index
            )
        return {name: tensor.clone() for name, tensor in self._kept[key].items()}

    def close(self) -> None:
        self.inner.close()


class NoTraining:
    """A trainer whose local epochs leave every model as it was; pre-training still trains (through
    ``inner``), since it decides KMA's clusters."""

    def __init__(self, inner: Trainer) -> None:
        self.inner = inner

    def train(
        self,
        model: nn.Module,
        params: ParamStack,
        data: FleetData | InteractionFleet,
        device_ids: torch.Tensor,
        config: TrainConfig,
        *,
        seed: int,
        round_index: int,
        **extra: Any,
    ) -> ParamStack:
        """The models as they came (pre-training: ``inner``'s)."""
        if round_index == PRETRAIN_ROUND:
            return self.inner.train(
                model, params, data, device_ids, config, seed=seed, round_index=round_index, **extra
            )
        return {name: tensor.clone() for name, tensor in params.items()}

    def close(self) -> None:
        pass  # the inner trainer belongs to the workload it came from


@dataclass(frozen=True)
class Costs:
    """Simulated seconds and bytes sent after each round (index 0: before the first round)."""

    sim_time_s: np.ndarray
    bytes_sent: np.ndarray

    @property
    def round_s(self) -> float:
        """Mean simulated seconds per round."""
        return float(self.sim_time_s[-1] / max(1, len(self.sim_time_s) - 1))


class CostPredictor:
    """One design's rounds, timed on demand as ``etree.engine.loop.run_protocol`` times them, on a
    fresh clock, without local training: what a real run's ``sim_time_s`` and ``bytes_sent`` will be.
    A search times only the rounds it needs (a design ruled out after 10 rounds is not timed to 60)."""

    def __init__(self, entry: ProtocolSpec, workload: Workload) -> None:
        timed = protocol_workload(dataclasses.replace(workload, trainer=NoTraining(workload.trainer)), entry)
        self.protocol = make_protocol(entry.name, entry.label, dict(entry.options))
        prepare_protocol(self.protocol, timed)
        self._advance = timed.network.timing
        self._times, self._sent = [self.protocol.clock.now], [0]

    @property
    def rounds(self) -> int:
        """Rounds timed so far."""
        return len(self._times) - 1

    def extend(self, rounds: int) -> Costs:
        """Time rounds until ``rounds`` are timed; the costs so far."""
        clock = self.protocol.clock
        while self.rounds < rounds:
            cost = self.protocol.run_round(self.rounds + 1)
            if not cost.clocked and self._advance:
                clock.advance(cost.duration_s)
            self._times.append(clock.now)
            self._sent.append(self._sent[-1] + cost.bytes_sent)
        return self.costs()

    def extend_past(self, seconds: float, cap: int) -> Costs:
        """Time rounds until one ends after ``seconds`` simulated seconds, or ``cap`` are timed."""
        while self.rounds < cap and self._times[-1] <= seconds:
            self.extend(self.rounds + 1)
        return self.costs()

    def costs(self) -> Costs:
        return Costs(np.array(self._times), np.array(self._sent, dtype=np.int64))
