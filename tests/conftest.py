"""Shared fixtures: a tiny offline spec that runs in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

TINY_SPEC = """
name = "tiny"
seed = 3
rounds = 4
eval_every = 2

[topology]
kind = "random_geometric"
devices = 12

[data]
dataset = "digits"
partition = "pathological"
classes_per_device = 3

[model]
kind = "softmax"

[train]
lr = 0.05
local_epochs = 1
batch_size = 4

[[protocols]]
name = "fedavg"
"""


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits scaled to [0, 1], shuffled once: 1,400 training and 397 test samples."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x = (x / 16).astype(np.float32)[order]
    y = y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]
