"""The ``local`` backend: every device in this process, one batched tensor program.

``local_train`` is the one place that picks the trainer of a workload's data:
classification fleets train by :func:`clients.classification.training.train_classifier`,
interaction fleets (recommenders) by :func:`clients.recommendation.training.train_recommender`.
The Ray backend's actors and the Flower clients call it too, so every backend trains
with the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from clients.classification.fleet import FleetData
from clients.classification.training import train_classifier
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.training import train_recommender
from clients.train_config import TrainConfig


def local_train(
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
    if isinstance(data, InteractionFleet):
        return train_recommender(
            model,
            params,
            data,
            device_ids,
            config.lr,
            config.local_epochs,
            config.batch_size,
            seed=seed,
            round_index=round_index,
        )
    return train_classifier(model, params, data, device_ids, config, seed=seed, round_index=round_index)


class LocalTrainer:
    """Every device in this process: :func:`local_train` itself."""

    train = staticmethod(local_train)

    def close(self) -> None:
        pass
