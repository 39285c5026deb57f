"""Shared fixtures: a tiny offline spec that runs in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

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
