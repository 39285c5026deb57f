"""Where local training runs: the training backend of a workload (``[backend]`` of the spec).

Protocols never call ``clients.training.local_train`` themselves; they call
``Workload.train_devices``, which hands the work to the workload's ``Trainer``.
Swapping the backend therefore changes no protocol code (as swapping the
network model changes none):

* ``local`` (the default): every device in this process, one batched tensor
  program (``LocalTrainer``);
* ``ray``: the device stack cut into contiguous shards, one per Ray actor, on
  this machine or a Ray cluster (``etree.ray_backend.RayTrainer``).

A device's randomness depends only on (seed, round, epoch, device id)
(``clients.training.epoch_order``), so which process or machine trains it
changes nothing it computes.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from clients.fleet import FleetData
from clients.interactions import InteractionFleet
from clients.models import ParamStack
from clients.training import TrainConfig, local_train
from etree.errors import ProtocolError

BACKENDS = ("local", "ray")


class Trainer(Protocol):
    """Trains devices: the contract of ``clients.training.local_train``, plus ``close``."""

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
    ) -> ParamStack:
        """``config.local_epochs`` of SGD on the devices ``device_ids`` (row i of ``params``); new tensors."""
        ...

    def close(self) -> None:
        """Release what the backend holds (processes, actors); idempotent."""
        ...


class LocalTrainer:
    """Every device in this process: ``clients.training.local_train`` itself."""

    train = staticmethod(local_train)

    def close(self) -> None:
        pass


def make_trainer(kind: str = "local", *, workers: int = 2, address: str = "") -> Trainer:
    """The trainer of a ``[backend]`` table. Ray is imported only for ``kind = "ray"``, and started
    only when that trainer first trains (``close`` stops it)."""
    if kind == "local":
        return LocalTrainer()
    if kind == "ray":
        from etree.ray_backend import RayTrainer

        return RayTrainer(workers=workers, address=address)
    raise ProtocolError(f"backend.kind: got {kind!r}; choose one of: {', '.join(BACKENDS)}")
