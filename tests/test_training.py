"""Batched local training equals a plain per-device loop of ordinary torch SGD."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model
from clients.classification.training import train_classifier
from clients.errors import ClientsError
from clients.params import init_params, replicate
from clients.train_config import TrainConfig, epoch_order
from etree.backends.local import local_train


@pytest.fixture(scope="module")
def fleet_parts():
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    order = np.random.default_rng(3).permutation(len(x))[:260]
    parts = [np.sort(p) for p in np.array_split(order, 12)]
    parts[2] = parts[2][:3]  # unequal sizes, including a tiny device
    parts[5] = parts[5][:1]
    return pack_fleet(x, y, parts), parts


def _loop_reference(kind, initial, fleet, parts, config, seed, round_index):
    """Each device trained alone with nn.Module + torch.optim.SGD, in the same sample order."""
    models = []
    for d, part in enumerate(parts):
        model = build_model(kind, (64,), 10)
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        n = len(part)
        x, y = fleet.x[d, :n], fleet.y[d, :n]
        for epoch in range(config.local_epochs):
            order = epoch_order(seed, round_index, epoch, np.array([d]), np.array([n]), fleet.capacity)[0][:n]
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
        models.append(model.state_dict())
    return models


@pytest.mark.parametrize(("kind", "batch_size"), [("softmax", 1), ("mlp", 4), ("cnn", 8)])
def test_batched_training_equals_per_device_loop(fleet_parts, kind, batch_size):
    fleet, parts = fleet_parts
    model = build_model(kind, (64,), 10)
    initial = init_params(model, seed=11)
    config = TrainConfig(lr=0.05, local_epochs=3, batch_size=batch_size)
    batched = train_classifier(
        model,
        replicate(initial, len(parts)),
        fleet,
        torch.arange(len(parts)),
        config,
        seed=5,
        round_index=2,
        chunk_size=5,
    )
    reference = _loop_reference(kind, initial, fleet, parts, config, seed=5, round_index=2)
    worst = max((batched[k][d] - reference[d][k]).abs().max().item() for d in range(len(parts)) for k in initial)
    assert worst < 1e-5
    moved = max((batched[k] - replicate(initial, len(parts))[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # training really changed the models


def test_device_stream_does_not_depend_on_batch(fleet_parts):
    """A device trains identically alone or inside the whole fleet (per-device random streams)."""
    fleet, _ = fleet_parts
    model = build_model("softmax", (64,), 10)
    initial = init_params(model, seed=1)
    config = TrainConfig(lr=0.1, local_epochs=2, batch_size=2)
    everyone = local_train(model, replicate(initial, 12), fleet, torch.arange(12), config, seed=9, round_index=1)
    alone = local_train(model, replicate(initial, 1), fleet, torch.tensor([7]), config, seed=9, round_index=1)
    for name in initial:
        assert torch.allclose(everyone[name][7], alone[name][0], atol=1e-6)


def test_training_does_not_mutate_its_input(fleet_parts):
    fleet, _ = fleet_parts
    model = build_model("softmax", (64,), 10)
    stack = replicate(init_params(model, seed=1), 12)
    before = {k: v.clone() for k, v in stack.items()}
    local_train(model, stack, fleet, torch.arange(12), TrainConfig(), seed=0, round_index=1)
    assert all(torch.equal(before[k], stack[k]) for k in stack)


@pytest.mark.parametrize("bad", [{"lr": 0}, {"lr": -1.0}, {"local_epochs": 0}, {"batch_size": 0}])
def test_bad_train_config_names_the_field(bad):
    with pytest.raises(ClientsError, match=f"train.{next(iter(bad))}"):
        TrainConfig(**bad)
