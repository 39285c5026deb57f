"""Every device's local data packed as padded stacked tensors, ready for batched training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FleetData:
    """Training data of D devices: ``x`` [D, M, ...], ``y`` [D, M], ``counts`` [D].

    Device d's samples are ``x[d, :counts[d]]``; rows past the count are zero
    padding that training masks out. ``M`` is the largest local dataset.
    """

    x: torch.Tensor
    y: torch.Tensor
    counts: torch.Tensor

    @property
    def devices(self) -> int:
        return int(self.counts.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.y.shape[1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.counts))


def pack_fleet(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray]) -> FleetData:
    """Gather each device's samples (``parts[d]`` indexes ``x``/``y``) into padded stacks."""
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    capacity = max(1, int(counts.max(initial=0)))
    order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if len(parts) else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(parts)), counts)
    cols = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    xs = np.zeros((len(parts), capacity, *x.shape[1:]), dtype=np.float32)
    ys = np.zeros((len(parts), capacity), dtype=np.int64)
    xs[rows, cols] = x[order]
    ys[rows, cols] = y[order]
    return FleetData(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(counts))
