"""The ``Trainer`` interface every training backend implements (Flower's ``Backend`` plays this role)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from clients.classification.fleet import FleetData
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.train_config import TrainConfig


class Trainer(Protocol):
    """Trains devices: the contract of ``clients.classification.training.local_train``, plus ``close``."""

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
        correction: ParamStack | None = None,
    ) -> ParamStack:
        """``config.local_epochs`` of SGD on the devices ``device_ids`` (row i of ``params``); new tensors.
        ``correction`` (row i for device i) is added to every step's gradient (SCAFFOLD's ``c - c_i``)."""
        ...

    def close(self) -> None:
        """Release what the backend holds (processes, actors); idempotent."""
        ...
