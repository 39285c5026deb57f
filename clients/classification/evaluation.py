"""Accuracy and loss of many models on one test set, batched across models."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from clients.params import ParamStack


@torch.no_grad()
def evaluate_models(
    model: nn.Module,
    params: ParamStack,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-model test accuracy and mean cross-entropy for the K models of a stack ([K, ...])."""
    forward = vmap(lambda p: functional_call(model, p, (x,)))
    count = next(iter(params.values())).shape[0]
    accuracy, loss = np.empty(count), np.empty(count)
    for start in range(0, count, chunk_size):
        chunk = {name: t[start : start + chunk_size] for name, t in params.items()}
        logits = forward(chunk)  # [k, n, C]
        k = logits.shape[0]
        accuracy[start : start + k] = (logits.argmax(-1) == y).float().mean(1).numpy()
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none")
        loss[start : start + k] = ce.view(k, -1).mean(1).numpy()
    return accuracy, loss


@torch.no_grad()
def voted_accuracy(model: nn.Module, params: ParamStack, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the majority vote of the stack's models (an ensemble view of a decentralised fleet)."""
    forward = vmap(lambda p: functional_call(model, p, (x,)))
    votes = forward(params).argmax(-1)  # [K, n]
    counts = F.one_hot(votes, int(votes.max()) + 1).sum(0)  # [n, C]
    return float((counts.argmax(-1) == y).float().mean())
