"""Local-training settings (``[train]`` of a spec) and the counter-based epoch order every trainer uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.errors import ClientsError
from clients.streams import hashed_uniform


@dataclass(frozen=True)
class TrainConfig:
    """Local SGD settings shared by every device. ``batch_size`` 1 is the E-Tree paper's per-sample SGD.

    ``prox_mu`` > 0 adds FedProx's proximal term mu/2 ||w - w_0||^2 to every device's local objective
    (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. 2), ``w_0`` being
    the model the device started this local training from; 0 is plain SGD, bit for bit.
    """

    lr: float = 0.02
    local_epochs: int = 1
    batch_size: int = 1
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ClientsError(f"train.lr: got {self.lr}; must be > 0")
        if self.local_epochs < 1:
            raise ClientsError(f"train.local_epochs: got {self.local_epochs}; must be >= 1")
        if self.batch_size < 1:
            raise ClientsError(f"train.batch_size: got {self.batch_size}; must be >= 1")
        if not self.prox_mu >= 0:
            raise ClientsError(f"train.prox_mu: got {self.prox_mu}; must be >= 0")


def local_steps(counts: np.ndarray, config: TrainConfig) -> np.ndarray:
    """SGD steps each device takes in one local training: ``local_epochs * ceil(n / batch_size)``
    (its last batch of an epoch partial, as the batched trainers run it; 0 for a device without data)."""
    counts = np.asarray(counts, dtype=np.int64)
    return config.local_epochs * (-(-counts // config.batch_size))


def epoch_order(
    seed: int, round_index: int, epoch: int, device_ids: np.ndarray, counts: np.ndarray, capacity: int
) -> np.ndarray:
    """Each device's sample order for one epoch: a shuffle of its own rows, padding last.

    The order of device d depends only on (seed, round, epoch, d), so a device
    trains the same whichever batch, chunk or machine runs it.
    """
    keys = hashed_uniform(seed, round_index, epoch, device_ids[:, None], np.arange(capacity)[None, :])
    keys[np.arange(capacity)[None, :] >= counts[:, None]] = 2.0  # padding sorts after every real sample
    return np.argsort(keys, axis=1, kind="stable")
