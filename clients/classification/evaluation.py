"""Accuracy and loss of many models on one test set, and of many models on every device's own data,
batched across models (and devices)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from clients.classification.fleet import FleetData
from clients.params import ParamStack

EVAL_CHUNK_FLOATS = 2**24  # logits one chunk of models holds (64 MB)


@torch.no_grad()
def evaluate_models(
    model: nn.Module,
    params: ParamStack,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int = 256,
    chunk_floats: int = EVAL_CHUNK_FLOATS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-model test accuracy and mean cross-entropy for the K models of a stack ([K, ...]).

    Models go ``chunk_size`` at a time, fewer when their logits on ``x`` would pass ``chunk_floats``:
    100 cluster models on a 100,000-device fleet's test set held ~5 GB of logits and temporaries at once."""
    forward = vmap(lambda p: functional_call(model, p, (x,)))
    count = next(iter(params.values())).shape[0]
    accuracy, loss = np.empty(count), np.empty(count)
    if count == 0:
        return accuracy, loss
    classes = functional_call(model, {name: t[0] for name, t in params.items()}, (x[:1],)).shape[-1]
    chunk_size = max(1, min(chunk_size, chunk_floats // max(1, len(x) * classes)))
    for start in range(0, count, chunk_size):
        chunk = {name: t[start : start + chunk_size] for name, t in params.items()}
        logits = forward(chunk)  # [k, n, C]
        k = logits.shape[0]
        accuracy[start : start + k] = (logits.argmax(-1) == y).float().mean(1).numpy()
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none")
        loss[start : start + k] = ce.view(k, -1).mean(1).numpy()
    return accuracy, loss


@torch.no_grad()
def device_losses(
    model: nn.Module,
    params: ParamStack,
    data: FleetData,
    device_ids: torch.Tensor,
    *,
    chunk_samples: int = 16384,
) -> torch.Tensor:
    """Mean cross-entropy of each of the K models of a stack on each device's own training data,
    ``[len(device_ids), K]`` (a device without data scores 0 on every model). What IFCA's devices
    compare to pick their cluster (Ghosh et al., NeurIPS 2020, Algorithm 2). Devices go in chunks of
    about ``chunk_samples`` padded samples, all K models at once."""
    count = next(iter(params.values())).shape[0]
    per_chunk = max(1, chunk_samples // max(1, data.capacity))
    out = torch.empty(len(device_ids), count)
    run = vmap(lambda p, x: functional_call(model, p, (x,)), in_dims=(0, None))
    for start in range(0, len(device_ids), per_chunk):
        ids = device_ids[start : start + per_chunk]
        x, y = data.x[ids], data.y[ids]  # [c, M, ...], [c, M]
        c, m = y.shape
        logits = run(params, x.flatten(0, 1))  # [K, c*M, C]
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten().repeat(count), reduction="none").view(count, c, m)
        valid = (torch.arange(m) < data.counts[ids].unsqueeze(1)).to(ce.dtype)  # [c, M]
        total = (ce * valid).sum(-1)  # [K, c]
        out[start : start + c] = (total / valid.sum(-1).clamp(min=1)).T
    return out


@torch.no_grad()
def voted_accuracy(model: nn.Module, params: ParamStack, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the majority vote of the stack's models (an ensemble view of a decentralised fleet)."""
    forward = vmap(lambda p: functional_call(model, p, (x,)))
    votes = forward(params).argmax(-1)  # [K, n]
    counts = F.one_hot(votes, int(votes.max()) + 1).sum(0)  # [n, C]
    return float((counts.argmax(-1) == y).float().mean())
