"""Batched local training of recommenders: BPR / BCE with on-device negative sampling, sparse row updates."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.errors import ClientsError
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.models import Recommender, gather_rows, score_rows
from clients.streams import hashed_uniform
from clients.train_config import epoch_order

NEGATIVE_TRIES = 4  # draws per negative before keeping one that may be a training item


_NEGATIVE_STREAM = 0x4E47  # keeps negative sampling apart from the epoch-order stream


DEFAULT_CHUNK = 1024


def sample_negatives(
    seed: int,
    round_index: int,
    epoch: int,
    device_ids: np.ndarray,
    positions: np.ndarray,
    count: int,
    seen: torch.Tensor,
    users: torch.Tensor,
    num_items: int,
) -> torch.Tensor:
    """``count`` items per (device, batch position) the slot has not trained on, [D, b, count].

    Draw t of negative k at position p of device d is uniform from
    (seed, round, epoch, d, p, k, t); the first draw outside the slot's training
    items is kept (the last draw if all ``NEGATIVE_TRIES`` hit).
    """
    u = hashed_uniform(
        seed,
        _NEGATIVE_STREAM,
        round_index,
        epoch,
        device_ids[:, None, None, None],
        positions[None, :, None, None],
        np.arange(count)[None, None, :, None],
        np.arange(NEGATIVE_TRIES)[None, None, None, :],
    )
    draws = torch.from_numpy(np.minimum((u * num_items).astype(np.int64), num_items - 1))  # [D, b, count, T]
    rows = torch.arange(len(device_ids)).view(-1, 1, 1, 1)
    hit = seen[rows, users[:, :, None, None], draws]
    hit[..., -1] = False  # the last draw is kept whatever it is
    first = hit.to(torch.int8).argmin(-1, keepdim=True)  # first draw that is not a training item
    return draws.gather(-1, first).squeeze(-1)


def pair_losses(model: Recommender, scores: torch.Tensor) -> torch.Tensor:
    """Per-sample loss from scores [D, b, 1 + n] (column 0 the positive): BPR or BCE with negatives."""
    if model.loss == "bpr":
        return -F.logsigmoid(scores[..., :1] - scores[..., 1:]).sum(-1)
    labels = torch.zeros_like(scores)
    labels[..., 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores, labels, reduction="none").sum(-1)


def train_recommender(
    model: nn.Module,
    params: ParamStack,
    data: InteractionFleet,
    device_ids: torch.Tensor,
    lr: float,
    local_epochs: int,
    batch_size: int,
    *,
    seed: int,
    round_index: int,
    chunk_size: int = DEFAULT_CHUNK,
) -> ParamStack:
    """``local_epochs`` of SGD for the devices ``device_ids`` (row i of ``params``); returns new tensors."""
    if not isinstance(model, Recommender):
        raise ClientsError(f"model.kind: interaction data needs a recommender model, got {type(model).__name__}")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    for start in range(0, len(device_ids), chunk_size):
        ids = device_ids[start : start + chunk_size]
        chunk = {name: t[start : start + chunk_size].clone() for name, t in params.items()}
        _train_chunk(model, chunk, data, ids, lr, local_epochs, batch_size, seed=seed, round_index=round_index)
        for name, tensor in chunk.items():
            out[name].append(tensor)
    return {name: torch.cat(parts) if len(parts) > 1 else parts[0] for name, parts in out.items()}


def _train_chunk(
    model: Recommender,
    params: ParamStack,
    data: InteractionFleet,
    ids: torch.Tensor,
    lr: float,
    local_epochs: int,
    batch_size: int,
    *,
    seed: int,
    round_index: int,
) -> None:
    """Train ``params`` (fresh tensors) in place."""
    counts = data.counts[ids]
    counts_np = counts.numpy()
    capacity = max(1, int(counts_np.max(initial=0)))
    users, items, seen = data.users[ids, :capacity], data.items[ids, :capacity], data.seen[ids]
    ids_np = ids.numpy()
    rows = torch.arange(len(ids)).unsqueeze(1)
    dense_names = [name for name in params if name not in model.tables]
    table_names = sorted(model.tables)
    for epoch in range(local_epochs):
        order = torch.from_numpy(epoch_order(seed, round_index, epoch, ids_np, counts_np, capacity))
        for step in range(-(-capacity // batch_size)):
            positions = torch.arange(step * batch_size, min((step + 1) * batch_size, capacity))
            valid = (positions.unsqueeze(0) < counts.unsqueeze(1)).float()  # [D, b]
            if not bool(valid.any()):
                break
            index = order[:, positions]
            user, positive = users[rows, index], items[rows, index]  # [D, b]
            negative = sample_negatives(
                seed, round_index, epoch, ids_np, positions.numpy(), model.negatives, seen, user, data.num_items
            )
            pair_items = torch.cat([positive.unsqueeze(-1), negative], dim=-1)  # [D, b, 1 + n]
            pair_users = user.unsqueeze(-1).expand_as(pair_items)
            flat_users, flat_items = pair_users.flatten(1), pair_items.flatten(1)
            touched = gather_rows(params, model, flat_users, flat_items)
            gathered = {k: v.requires_grad_(True) for k, v in touched.items()}
            dense = {name: params[name].requires_grad_(True) for name in dense_names}
            scores = score_rows(model, dense, gathered).view_as(pair_items)
            losses = pair_losses(model, scores)  # [D, b]
            if model.l2 > 0:  # BPR-Opt, per sample on the rows it touched (the user row once per pair)
                norms = torch.stack([v.pow(2).reshape(*v.shape[:2], -1).sum(-1) for v in gathered.values()]).sum(0)
                losses = losses + model.l2 * norms.view_as(pair_items).sum(-1)
            total = (losses * valid).sum()
            leaves = [gathered[name] for name in table_names] + [dense[name] for name in dense_names]
            grads = torch.autograd.grad(total, leaves)
            with torch.no_grad():
                for name, grad in zip(table_names, grads[: len(table_names)], strict=True):
                    index_of = flat_users if model.tables[name] == "user" else flat_items
                    target = params[name].detach()
                    target.index_put_((rows, index_of), grad * -lr, accumulate=True)
                    params[name] = target
                scale = 1.0 / valid.sum(1).clamp(min=1.0)  # dense weights: the batch mean
                for name, grad in zip(dense_names, grads[len(table_names) :], strict=True):
                    shape = (-1,) + (1,) * (grad.dim() - 1)
                    params[name] = params[name].detach() - lr * grad * scale.view(shape)
