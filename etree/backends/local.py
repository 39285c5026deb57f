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
from clients.errors import ClientsError
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
    correction: ParamStack | None = None,
) -> ParamStack:
    """``config.local_epochs`` of SGD on the devices ``device_ids`` (row i of ``params``); new tensors.
    ``correction`` (a per-device constant added to every gradient, SCAFFOLD's ``c - c_i``) and
    ``config.prox_mu`` (FedProx) are for classifiers: a recommender's sparse row updates touch only
    the rows of a batch, which a dense term on every row would undo (refused, not ignored)."""
    if isinstance(data, InteractionFleet):
        if config.prox_mu > 0 or correction is not None:
            raise ClientsError(
                f"train.prox_mu: got {config.prox_mu} (correction: {correction is not None}); recommenders "
                f"train without a proximal term or a SCAFFOLD correction: use plain local SGD"
            )
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
    return train_classifier(
        model, params, data, device_ids, config, seed=seed, round_index=round_index, correction=correction
    )


class LocalTrainer:
    """Every device in this process: :func:`local_train` itself."""

    train = staticmethod(local_train)

    def close(self) -> None:
        pass
