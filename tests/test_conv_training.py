"""The batched convolutional path (clients/classification/conv_step.py) equals a per-device loop of
ordinary torch SGD, and takes exactly the stacks it computes exactly."""

import numpy as np
import pytest
import torch
from torch import nn

from clients.classification import conv_step
from clients.classification.conv_step import conv_plan
from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model
from clients.classification.training import dense_layers, train_classifier
from clients.params import init_params, replicate
from clients.train_config import TrainConfig, epoch_order


def _fleet(shape, devices, seed=0):
    """Unequal local datasets (one device holds a single sample), images with ties (constant regions)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 14, devices)
    sizes[1] = 1
    x = rng.random((int(sizes.sum()), *shape), dtype=np.float32)
    x[::3] = 0.0  # all-zero samples: every pooling window ties
    y = rng.integers(0, 10, len(x))
    return pack_fleet(x, y, np.split(np.arange(len(x)), np.cumsum(sizes)[:-1])), sizes


def _loop(build, initial, fleet, sizes, config, seed, round_index):
    """Each device alone: nn.Module + torch.optim.SGD + autograd, in the engine's sample order."""
    out = []
    for d, n in enumerate(sizes):
        model = build()
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        for epoch in range(config.local_epochs):
            order = epoch_order(seed, round_index, epoch, np.array([d]), np.array([n]), fleet.capacity)[0][:n]
            for start in range(0, n, config.batch_size):
                idx = torch.from_numpy(order[start : start + config.batch_size])
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(fleet.x[d, idx]), fleet.y[d, idx]).backward()
                optimizer.step()
        out.append(model.state_dict())
    return out


def _odd_cnn():
    """No Unflatten (data already [C, H, W]), bias-free, strided, dilated, grouped, padded pools."""
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=False),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(6, 4, (2, 3), groups=2, dilation=(1, 2)),
        nn.ReLU(),
        nn.MaxPool2d((1, 2), stride=1, dilation=(2, 1)),  # dilated: ReLU and pool keep their order
        nn.Flatten(),
        nn.Linear(12, 12),
        nn.ReLU(),
        nn.Linear(12, 10, bias=False),
    )


def _grouped_first():
    """A grouped first convolution on several input channels."""
    return nn.Sequential(
        nn.Unflatten(1, (4, 6, 6)),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(54, 10),
    )


CASES = {  # input shape, model
    "cnn2d": ((64,), lambda: build_model("cnn", (64,), 10, channels=4)),  # 8x8 images, as digits
    "cnn1d": ((20,), lambda: build_model("cnn", (20,), 10, channels=3)),  # MNIST-1D's kind of model
    "odd": ((2, 12, 11), _odd_cnn),
    "grouped_first": ((144,), _grouped_first),
}


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_path_equals_per_device_loop(case, batch_size, monkeypatch):
    monkeypatch.setattr(conv_step, "BLOCK_SAMPLES", 7)  # several device blocks, the last one ragged
    shape, build = CASES[case]
    model = build()
    assert conv_plan(model) is not None and dense_layers(model) is None
    fleet, sizes = _fleet(shape, devices=9)
    initial = init_params(model, seed=4)
    config = TrainConfig(lr=0.1, local_epochs=4, batch_size=batch_size)
    stack = replicate(initial, len(sizes))
    batched = train_classifier(model, stack, fleet, torch.arange(len(sizes)), config, seed=2, round_index=1)
    reference = _loop(build, initial, fleet, sizes, config, seed=2, round_index=1)
    worst = max((batched[k][d] - reference[d][k]).abs().max().item() for d in range(len(sizes)) for k in initial)
    assert worst < 1e-5
    assert max((batched[k] - stack[k]).abs().max().item() for k in initial) > 1e-2  # it really trained


def test_a_stack_it_does_not_compute_exactly_trains_on_the_generic_path():
    """AvgPool is not in the plan's vocabulary: the vmap + autograd path still equals the loop."""

    def build():
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(36, 10))

    model = build()
    assert conv_plan(model) is None
    fleet, sizes = _fleet((2, 9, 7), devices=4)
    initial = init_params(model, seed=1)
    config = TrainConfig(lr=0.1, local_epochs=2, batch_size=2)
    batched = train_classifier(model, replicate(initial, 4), fleet, torch.arange(4), config, seed=0, round_index=0)
    reference = _loop(build, initial, fleet, sizes, config, seed=0, round_index=0)
    assert max((batched[k][d] - reference[d][k]).abs().max().item() for d in range(4) for k in initial) < 1e-5


class _MyConv(nn.Conv2d):
    pass


@pytest.mark.parametrize(
    "layers",
    [
        [_MyConv(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)],  # subclass: may compute anything
        [nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(18, 2)],
        [nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(18, 2)],
        [nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten(), nn.Linear(2, 2)],
        [nn.Conv2d(1, 2, 3), nn.MaxPool2d(1, return_indices=True), nn.Flatten(), nn.Linear(2, 2)],
        [nn.Conv2d(1, 2, 3), nn.Linear(1, 2), nn.Flatten()],  # Linear on an image
        [nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2), nn.MaxPool1d(1)],  # pool after Flatten
        [nn.Conv2d(1, 2, 3), nn.ReLU()],  # no Flatten: no [classes] logits
        [nn.Conv1d(1, 2, 3), nn.MaxPool2d(1), nn.Flatten(), nn.Linear(2, 2)],  # 1-D and 2-D mixed
        [nn.Unflatten(1, (1, 3, 3)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)],
        [nn.Flatten(), nn.Linear(4, 2)],  # no convolution (the dense path's)
    ],
)
def test_plan_refuses_what_it_does_not_compute_exactly(layers):
    assert conv_plan(nn.Sequential(*layers)) is None
