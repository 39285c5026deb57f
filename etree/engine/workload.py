"""The workload of a run: model, data, network conditions and backend, shared read-only by its protocols."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np
import torch
from torch import nn

from clients.classification.fleet import FleetData
from clients.classification.models import forward_flops
from clients.params import ParamStack, model_bytes
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.models import Recommender
from clients.train_config import TrainConfig
from etree.backends.base import Trainer
from etree.backends.local import LocalTrainer
from etree.network.conditions import NetworkConditions


@dataclass(frozen=True)
class Workload:
    """Everything a protocol run needs, shared read-only by all protocols of a run.

    ``private`` names parameters that never leave their device (a recommender's
    user embeddings): protocols train them but never send, average or report
    them, and ``message_bytes`` counts only the others.

    ``trainer`` is where local training runs (``[backend]``: this process, or
    Ray workers); protocols train through ``train_devices``, never by calling
    ``local_train`` themselves, so the backend changes no protocol code.

    ``x_val``/``y_val`` is the validation split carved from the training data
    before partitioning (``[data] validation_fraction``), so no device holds it:
    what a method may look at to choose (KMA's public set, tuning), while the
    test set is touched only for reporting. Empty when the run has none.
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
    trainer: Trainer = field(default_factory=LocalTrainer)  # the training backend (etree.backends.local)
    x_val: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # validation split (no device holds it)
    y_val: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

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
        correction: ParamStack | None = None,
    ) -> ParamStack:
        """Local training of the devices ``device_ids`` (row i of ``params``) on the run's backend:
        ``config`` (default ``self.train``) on ``data`` (default the fleet's), seeded by ``self.seed``
        and ``round_index``, ``correction`` (row i for device i, SCAFFOLD's ``c - c_i``) added to every
        step's gradient. Returns new tensors; ``params`` is not modified."""
        return self.trainer.train(
            self.model,
            params,
            self.data if data is None else data,
            device_ids,
            self.train if config is None else config,
            seed=self.seed,
            round_index=round_index,
            correction=correction,
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
