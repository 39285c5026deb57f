"""Compact models for edge devices, and their parameters as stacked tensors.

A model here is a template: ``torch.func.functional_call`` runs it with any
parameter dict, so the parameters of every device live in one stacked dict
``{name: Tensor[D, ...]}`` (a ``ParamStack``) and the module itself holds no state
that matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clients.errors import ClientsError
from etree.core.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model", "model.kind", error=ClientsError)
register_model = MODELS.register  # factories fn(input_shape, num_classes, **options) -> nn.Module


def _features(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


@register_model("softmax")
def softmax_regression(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: the E-Tree paper's 'single layer neural network'."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), num_classes))


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 64, layers: int = 1) -> nn.Module:
    """A small fully connected network with ReLU hidden layers."""
    if hidden < 1 or layers < 1:
        raise ClientsError(f"model.hidden/model.layers: got {hidden}/{layers}; both must be >= 1")
    blocks: list[nn.Module] = [nn.Flatten()]
    width = _features(input_shape)
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, num_classes))
    return nn.Sequential(*blocks)


@register_model("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int, *, channels: int = 16) -> nn.Module:
    """A two-conv CNN: 1-D for flat feature vectors (MNIST-1D), 2-D for images.

    A flat input whose length is a perfect square (``digits``: 64 = 8x8) is read
    as a one-channel square image.
    """
    if channels < 1:
        raise ClientsError(f"model.channels: got {channels}; must be >= 1")
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side == input_shape[0]:
            return _cnn2d((1, side, side), num_classes, channels)
        return _cnn1d(input_shape[0], num_classes, channels)
    if len(input_shape) == 3:
        return _cnn2d(input_shape, num_classes, channels)
    raise ClientsError(f"model.kind: 'cnn' takes [features] or [C, H, W] inputs, got {list(input_shape)}")


def _cnn1d(length: int, num_classes: int, channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, length)),
        nn.Conv1d(1, channels, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(channels * (length // 4), num_classes),
    )


def _cnn2d(shape: tuple[int, ...], num_classes: int, channels: int) -> nn.Module:
    in_channels, height, width = shape
    return nn.Sequential(
        nn.Unflatten(1, (in_channels, height, width)),
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * (height // 4) * (width // 4), num_classes),
    )


def build_model(kind: str, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """Build a registered model, naming the spec field on a bad kind or option, or a factory (a
    plug-in's) that returns what the batched engine cannot train: no module, no parameters, or
    running statistics."""
    factory = MODELS.get(kind)
    model = factory(tuple(input_shape), num_classes, **MODELS.check(kind, options, "model"))
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise ClientsError(
            f"model.kind: {kind!r} must return a torch.nn.Module with parameters, got {type(model).__name__}"
        )
    if any(getattr(module, "track_running_stats", False) for module in model.modules()):
        raise ClientsError(  # vmap refuses them: only parameters are stacked per device (training.py)
            f"model.kind: {kind!r} keeps running statistics (BatchNorm), which devices cannot hold here; "
            "use LayerNorm or GroupNorm, or track_running_stats=False"
        )
    return model


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass on one sample, from the layers' shapes.

    Counted with forward hooks on the layers that dominate compact models
    (linear and convolution); torch's own FlopCounterMode would import
    torch._dynamo, which costs seconds at start-up.
    """
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
            total += 2 * kernel * output[0].numel()

    hooks = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total
