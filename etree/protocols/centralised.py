"""Reference points that are not federated: pooled-data training and, for recommenders, popularity.

- ``centralised``: every device's training data pooled on one server and trained
  by the same code (``local_train``, one local epoch per round) from the same
  initial model, so the gap to it is what federation costs. For a recommender
  the pooled user table holds every device's users (device d's slot s is
  pooled row d * U + s), so each user is still scored with its own embedding.
  Bytes: each device uploads its raw data once, in round 1 (two int32 ids per
  interaction, or a float32 sample and an int64 label). A large pooled epoch
  usually wants a larger batch: give the table its own ``train = {batch_size =
  ...}`` (every protocol can).
- ``popularity``: ranks every user's test candidates by how many training
  interactions each item has (the "ItemPop" baseline of He et al., 2017);
  nothing is trained or sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clients.classification.fleet import FleetData
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet, pool_fleet
from clients.recommendation.metrics import DeviceModels, popularity_metrics
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import expect, stack_like
from etree.engine.protocol import Protocol, RoundCost
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.servers import choose_server

INTERACTION_BYTES = 8  # a (user, item) pair as two int32 ids


def pool_samples(data: FleetData) -> FleetData:
    """Every device's samples as one device's."""
    valid = torch.arange(data.capacity).unsqueeze(0) < data.counts.unsqueeze(1)
    return FleetData(data.x[valid].unsqueeze(0), data.y[valid].unsqueeze(0), data.counts.sum().view(1))


class CentralisedProtocol(Protocol):
    """One model trained on the pooled data of every device (see the module docstring)."""

    def __init__(self, label: str, *, server: str | int) -> None:
        super().__init__(label)
        self._server = server

    def setup(self, workload: Workload) -> None:
        self.workload = workload
        self.network = NetworkModel(workload.graph)
        self.server = choose_server(workload, self.network, self._server, self.label)
        data = workload.data
        self.params: ParamStack = {name: t.unsqueeze(0).clone() for name, t in workload.initial.items()}
        if isinstance(data, InteractionFleet):
            self.pooled: FleetData | InteractionFleet = pool_fleet(data)
            self.upload = int(data.counts.sum()) * INTERACTION_BYTES
            for name in workload.private:  # every device's user slots, each from the common initial rows
                self.params[name] = self.params[name].repeat(1, data.devices, *[1] * (self.params[name].dim() - 2))
        else:
            self.pooled = pool_samples(data)
            per_sample = data.x[0, 0].numel() * data.x.element_size() + data.y.element_size()
            self.upload = int(data.counts.sum()) * per_sample

    def run_round(self, round_index: int) -> RoundCost:
        self.params = self.workload.train_devices(self.params, torch.tensor([0]), round_index, data=self.pooled)
        flops = float(self.workload.epoch_flops.sum())
        duration = float(self.network.compute_s(np.array([self.server]), np.array([flops]))[0])
        if round_index > 1:
            return RoundCost(duration, 0, 0)
        senders = int(np.sum(np.arange(self.workload.devices) != self.server))
        return RoundCost(duration, self.upload, senders)

    def evaluation_models(self) -> ParamStack:
        return self.workload.shared(self.params)

    def device_models(self) -> DeviceModels:
        data = self.workload.data
        assert isinstance(data, InteractionFleet)
        private = {
            name: self.params[name][0].reshape(data.devices, data.slots, *self.params[name].shape[2:])
            for name in self.workload.private
        }
        devices = torch.arange(data.devices)
        return DeviceModels(self.evaluation_models(), torch.zeros_like(devices), private, devices)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``setup`` pools the data again (deterministic), then the saved model replaces the initial one."""
        self.setup(self.workload)
        self.params = stack_like(state["params"], self.params, "params")


class PopularityProtocol(Protocol):
    """Item popularity over the pooled training interactions; constant over rounds."""

    def setup(self, workload: Workload) -> None:
        if not isinstance(workload.data, InteractionFleet):
            raise ProtocolError(f"protocols.{self.label}: popularity ranks items; it needs a recommender workload")
        self.metrics = popularity_metrics(workload.data)

    def run_round(self, round_index: int) -> RoundCost:
        return RoundCost(0.0, 0, 0)

    def evaluation_models(self) -> ParamStack:
        raise ProtocolError(f"protocols.{self.label}: popularity has no model")

    def evaluate(self, workload: Workload) -> dict[str, float]:
        return dict(self.metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        metrics = expect(state["metrics"], dict, "metrics")
        self.metrics = {name: float(expect(value, float, f"metrics.{name}")) for name, value in metrics.items()}


@register_protocol("centralised")
def centralised(label: str, *, server: str | int = "auto") -> Protocol:
    """Pooled-data training by the same code, with the protocol's ``train`` (``[train]``, or the
    table's own ``train = {...}``)."""
    return CentralisedProtocol(label, server=server)


@register_protocol("popularity")
def popularity(label: str) -> Protocol:
    """The popularity (ItemPop) baseline for recommender workloads."""
    return PopularityProtocol(label)
