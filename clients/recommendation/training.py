"""Batched local training of recommenders: BPR / BCE with on-device negative sampling, sparse row updates.

A round's samples are drawn before its first step (:func:`round_samples`): each
epoch's order and each sample's negatives depend only on (seed, round, epoch,
device, position), so the item rows a device will touch are known up front
(:func:`touched_items`). That lets a caller hand training a *compact* stack: item
tables holding only those rows, ``[n, R, ...]``, with their item ids under
:data:`ROWS` (sorted, padded with ``num_items``). Training then indexes the local
rows instead of the item ids and returns the same compact stack, trained: the
same arithmetic as on whole item tables, on the rows it touches (FCF,
Ammad-ud-din et al. 2019, and FedRec, Lin et al. 2020: a device updates, and
sends, only the item rows of its interactions and sampled negatives). Without
:data:`ROWS` the item tables are whole, ``[n, I, ...]``.

Steps run over the devices that still have samples at that position (longest
histories first), so an epoch costs the fleet's interactions, not devices x the
longest history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.errors import ClientsError
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.models import Recommender, score_rows
from clients.streams import hashed_uniform
from clients.train_config import epoch_order

NEGATIVE_TRIES = 4  # draws per negative before keeping one that may be a training item


_NEGATIVE_STREAM = 0x4E47  # keeps negative sampling apart from the epoch-order stream


DEFAULT_CHUNK = 1024

ROWS = "@rows"  # in a compact stack: the item ids [n, R] whose rows its item tables hold (sorted, padded)


def _draw_negatives(
    seed: int,
    round_index: int,
    epoch: int,
    device_ids: np.ndarray,
    positions: np.ndarray,
    count: int,
    seen: torch.Tensor,
    rows: torch.Tensor,
    users: torch.Tensor,
    num_items: int,
) -> torch.Tensor:
    """Negatives [..., count] for samples at broadcast coordinates ``device_ids``/``positions`` (shape ``[...]``),
    ``rows``/``users`` indexing ``seen`` (the device's row in it and the sample's slot)."""
    u = hashed_uniform(
        seed,
        _NEGATIVE_STREAM,
        round_index,
        epoch,
        device_ids[..., None, None],
        positions[..., None, None],
        np.arange(count)[:, None],
        np.arange(NEGATIVE_TRIES)[None, :],
    )
    draws = torch.from_numpy(np.minimum((u * num_items).astype(np.int64), num_items - 1))  # [..., count, T]
    hit = seen[rows[..., None, None], users[..., None, None], draws]
    hit[..., -1] = False  # the last draw is kept whatever it is
    first = hit.to(torch.int8).argmin(-1, keepdim=True)  # first draw that is not a training item
    return draws.gather(-1, first).squeeze(-1)


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
    rows = torch.arange(len(device_ids)).unsqueeze(1).expand_as(users)
    return _draw_negatives(
        seed, round_index, epoch, device_ids[:, None], positions[None, :], count, seen, rows, users, num_items
    )


@dataclass(frozen=True)
class EpochSamples:
    """One epoch of n devices: position p of device d trains slot ``users[d, p]`` on the positive
    ``items[d, p, 0]`` and the negatives ``items[d, p, 1:]`` (positions past ``counts[d]`` are padding)."""

    users: torch.Tensor  # [n, capacity]
    items: torch.Tensor  # [n, capacity, 1 + negatives]


@dataclass(frozen=True)
class _Drawn:
    """The last round :func:`round_samples` drew: for which fleet, seed, round and devices."""

    data: InteractionFleet
    key: tuple[int, int, int, int]
    device_ids: torch.Tensor
    samples: list[EpochSamples]


_last: list[_Drawn] = []  # at most one: what touched_items drew, for the training calls that follow


def round_samples(
    model: Recommender,
    data: InteractionFleet,
    device_ids: torch.Tensor,
    local_epochs: int,
    *,
    seed: int,
    round_index: int,
) -> list[EpochSamples]:
    """Every epoch's samples of one round (negatives drawn for real positions only).

    A device's samples depend only on (seed, round, epoch, device), so the last draw is kept and
    a call for some of its devices reads theirs from it (the rows a caller learns from
    :func:`touched_items` are not drawn again by the training calls that follow)."""
    key = (seed, round_index, local_epochs, model.negatives)
    if _last and _last[0].data is data and _last[0].key == key:
        drawn = _last[0]
        where = torch.full((data.devices,), -1, dtype=torch.int64)
        where[drawn.device_ids] = torch.arange(len(drawn.device_ids))
        position = where[device_ids]
        if len(device_ids) and bool((position >= 0).all()):
            width = max(1, int(data.counts[device_ids].max()))
            return [EpochSamples(e.users[position, :width], e.items[position, :width]) for e in drawn.samples]
    samples = _draw_round(model, data, device_ids, local_epochs, seed=seed, round_index=round_index)
    _last[:] = [_Drawn(data, key, device_ids.clone(), samples)]
    return samples


def _draw_round(
    model: Recommender,
    data: InteractionFleet,
    device_ids: torch.Tensor,
    local_epochs: int,
    *,
    seed: int,
    round_index: int,
) -> list[EpochSamples]:
    counts = data.counts[device_ids]
    counts_np, ids_np = counts.numpy(), device_ids.numpy()
    capacity = max(1, int(counts_np.max(initial=0)))
    users, items = data.users[device_ids, :capacity], data.items[device_ids, :capacity]
    rows = torch.arange(len(device_ids)).unsqueeze(1)
    device, position = np.nonzero(np.arange(capacity)[None, :] < counts_np[:, None])
    local = torch.from_numpy(device)
    out = []
    for epoch in range(local_epochs):
        order = torch.from_numpy(epoch_order(seed, round_index, epoch, ids_np, counts_np, capacity))
        user, positive = users[rows, order], items[rows, order]  # [n, capacity]
        negatives = torch.zeros(len(device_ids), capacity, model.negatives, dtype=torch.int64)
        negatives[local, position] = _draw_negatives(
            seed,
            round_index,
            epoch,
            ids_np[device],
            position,
            model.negatives,
            data.seen,
            device_ids[local],
            user[local, position],
            data.num_items,
        )
        out.append(EpochSamples(user, torch.cat([positive.unsqueeze(-1), negatives], dim=-1)))
    return out


def touched_items(
    model: nn.Module,
    data: InteractionFleet,
    device_ids: torch.Tensor,
    local_epochs: int,
    *,
    seed: int,
    round_index: int,
) -> torch.Tensor:
    """The item ids [n, R] each device's training of this round touches (its interactions and sampled
    negatives), sorted, padded with ``data.num_items``: the rows of a compact stack (:data:`ROWS`)."""
    recommender = _recommender(model)
    samples = round_samples(recommender, data, device_ids, local_epochs, seed=seed, round_index=round_index)
    valid = (torch.arange(samples[0].items.shape[1]) < data.counts[device_ids].unsqueeze(1)).unsqueeze(-1)
    mask = torch.zeros(len(device_ids), data.num_items + 1, dtype=torch.bool)
    rows = torch.arange(len(device_ids)).view(-1, 1, 1)
    for epoch in samples:
        mask[rows.expand_as(epoch.items), torch.where(valid, epoch.items, data.num_items)] = True
    return rows_of_mask(mask[:, : data.num_items])


def rows_of_mask(mask: torch.Tensor) -> torch.Tensor:
    """The true columns of each row of ``mask`` [n, I], sorted, padded with I: [n, max count]."""
    width = int(mask.sum(1).max()) if len(mask) else 0
    row, column = mask.nonzero(as_tuple=True)
    slot = torch.arange(len(row)) - torch.repeat_interleave(torch.cumsum(mask.sum(1), 0) - mask.sum(1), mask.sum(1))
    out = torch.full((mask.shape[0], width), mask.shape[1], dtype=torch.int64)
    out[row, slot] = column
    return out


def pair_losses(model: Recommender, scores: torch.Tensor) -> torch.Tensor:
    """Per-sample loss from scores [D, b, 1 + n] (column 0 the positive): BPR or BCE with negatives."""
    if model.loss == "bpr":
        return -F.logsigmoid(scores[..., :1] - scores[..., 1:]).sum(-1)
    labels = torch.zeros_like(scores)
    labels[..., 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores, labels, reduction="none").sum(-1)


def _recommender(model: nn.Module) -> Recommender:
    if not isinstance(model, Recommender):
        raise ClientsError(f"model.kind: interaction data needs a recommender model, got {type(model).__name__}")
    return model


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
    """``local_epochs`` of SGD for the devices ``device_ids`` (row i of ``params``); returns new tensors.

    ``params`` is whole (item tables ``[n, I, ...]``) or compact (with :data:`ROWS`, see the module
    docstring); the result has the same form."""
    recommender = _recommender(model)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    for start in range(0, len(device_ids), chunk_size):
        ids = device_ids[start : start + chunk_size]
        chunk = {name: t[start : start + chunk_size].clone() for name, t in params.items()}
        _train_chunk(recommender, chunk, data, ids, lr, local_epochs, batch_size, seed=seed, round_index=round_index)
        for name, tensor in chunk.items():
            out[name].append(tensor)
    return {name: torch.cat(parts) if len(parts) > 1 else parts[0] for name, parts in out.items()}


def _local_items(rows: torch.Tensor, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Positions of ``items`` [n, P, c] in each device's sorted ``rows`` [n, R]; refuses an item not there."""
    flat = items.flatten(1)
    local = torch.searchsorted(rows, flat).clamp(max=max(0, rows.shape[1] - 1))
    found = rows.gather(1, local) == flat if rows.shape[1] else torch.zeros_like(flat, dtype=torch.bool)
    if not bool((found | ~valid.unsqueeze(-1).expand_as(items).flatten(1)).all()):
        raise ClientsError(f"{ROWS}: a compact stack lacks item rows its training touches (see touched_items)")
    return local.view_as(items)


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
    capacity = max(1, int(counts.max())) if len(ids) else 1
    by_length = torch.argsort(counts, descending=True, stable=True)  # rows with samples left form a prefix
    dense_names = [name for name in params if name not in model.tables and name != ROWS]
    table_names = sorted(model.tables)
    compact = params.get(ROWS)
    samples = round_samples(model, data, ids, local_epochs, seed=seed, round_index=round_index)
    for epoch in samples:
        valid_all = torch.arange(capacity).unsqueeze(0) < counts.unsqueeze(1)  # [n, capacity]
        items_of = epoch.items if compact is None else _local_items(compact, epoch.items, valid_all)
        for step in range(-(-capacity // batch_size)):
            begin, end = step * batch_size, min((step + 1) * batch_size, capacity)
            rows = by_length[: int((counts > begin).sum())]
            if not len(rows):
                break
            valid = valid_all[rows, begin:end].float()  # [m, b]
            user = epoch.users[rows, begin:end]
            pair_items = items_of[rows, begin:end]  # [m, b, 1 + n]
            pair_users = user.unsqueeze(-1).expand_as(pair_items)
            flat_users, flat_items = pair_users.flatten(1), pair_items.flatten(1)
            row_index = rows.unsqueeze(1)
            gathered = {
                name: params[name][row_index, flat_users if kind == "user" else flat_items]
                for name, kind in model.tables.items()
            }
            grads = None if dense_names else model.row_gradients(gathered, valid)
            dense_grads: dict[str, torch.Tensor] = {}
            if grads is None:
                grads, dense_grads = _autograd_step(model, gathered, {n: params[n][rows] for n in dense_names}, valid)
            with torch.no_grad():
                for name in table_names:
                    index_of = flat_users if model.tables[name] == "user" else flat_items
                    params[name].index_put_((row_index, index_of), grads[name] * -lr, accumulate=True)
                scale = 1.0 / valid.sum(1).clamp(min=1.0)  # dense weights: the batch mean
                for name, grad in dense_grads.items():
                    shape = (-1,) + (1,) * (grad.dim() - 1)
                    params[name][rows] = params[name][rows] - lr * grad * scale.view(shape)


def _autograd_step(
    model: Recommender, rows: dict[str, torch.Tensor], dense: ParamStack, valid: torch.Tensor
) -> tuple[dict[str, torch.Tensor], ParamStack]:
    """Gradients of the batch's summed loss (valid samples only) w.r.t. the gathered rows and the dense weights."""
    gathered = {name: v.requires_grad_(True) for name, v in rows.items()}
    weights = {name: v.requires_grad_(True) for name, v in dense.items()}
    scores = score_rows(model, weights, gathered).view(valid.shape[0], valid.shape[1], -1)
    losses = pair_losses(model, scores)  # [m, b]
    if model.l2 > 0:  # BPR-Opt, per sample on the rows it touched (the user row once per pair)
        norms = torch.stack([v.pow(2).reshape(*v.shape[:2], -1).sum(-1) for v in gathered.values()]).sum(0)
        losses = losses + model.l2 * norms.view_as(scores).sum(-1)
    leaves = list(gathered.values()) + list(weights.values())
    grads = torch.autograd.grad((losses * valid).sum(), leaves)
    return dict(zip(gathered, grads[: len(gathered)], strict=True)), dict(
        zip(weights, grads[len(gathered) :], strict=True)
    )
