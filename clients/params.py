"""Model parameters as stacked tensors ``{name: [D, ...]}``: creation, replication, selection, size.

Shared by classification and recommendation: a stack's row i is device i's model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ParamStack = dict[str, torch.Tensor]


def init_params(model: nn.Module, seed: int) -> ParamStack:
    """Draw one model's parameters from a private generator (never torch's global RNG).

    Weights are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) like PyTorch's default, biases zero.
    """
    generator = torch.Generator().manual_seed(seed)
    params: ParamStack = {}
    for name, tensor in model.named_parameters():
        if tensor.dim() >= 2:
            bound = 1.0 / math.sqrt(math.prod(tensor.shape[1:]))
            params[name] = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound
        else:
            params[name] = torch.zeros(tensor.shape)
    return params


def replicate(params: ParamStack, count: int) -> ParamStack:
    """Stack ``count`` copies of one model's parameters (new memory, safe to update)."""
    return {name: tensor.unsqueeze(0).repeat(count, *([1] * tensor.dim())) for name, tensor in params.items()}


def select(stack: ParamStack, rows: torch.Tensor) -> ParamStack:
    """The models at ``rows`` of a stack (a gather; copies)."""
    return {name: tensor[rows] for name, tensor in stack.items()}


def num_parameters(params: ParamStack, *, stacked: bool = True) -> int:
    """Parameters of one model (the first row of a stack, or a single model)."""
    return sum(t[0].numel() if stacked else t.numel() for t in params.values())


def model_bytes(params: ParamStack, *, stacked: bool = True) -> int:
    """Bytes one model occupies on the wire (its parameter tensors, uncompressed)."""
    return sum((t[0] if stacked else t).numel() * t.element_size() for t in params.values())
