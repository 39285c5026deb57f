"""Ranking metrics of recommenders: HR@10 and NDCG@10 (sampled and full ranking), per device, batched."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clients.errors import ClientsError
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.models import Recommender, score_rows

TOP_K = 10


FULL_SUFFIX = "_full"  # hr@10_full, ndcg@10_full: ranked against every untrained item, not 99 sampled


EVAL_PAIRS = 1 << 20  # (user, item) pairs scored per evaluation chunk: bounds gathered rows to ~100 MB


def split_private(stack: ParamStack, private: frozenset[str]) -> tuple[ParamStack, ParamStack]:
    """(shared, private) parts of a stack, same tensors."""
    return {k: v for k, v in stack.items() if k not in private}, {k: v for k, v in stack.items() if k in private}


def rank_of_positive(scores: torch.Tensor) -> torch.Tensor:
    """Rank (0 = top) of column 0 among each row's candidates; a tie counts against the positive,
    and so does a NaN (a diverged model must score no hit: NaN >= x is False, which would count as one)."""
    return _beats(scores[..., 1:], scores[..., :1]).sum(-1)


def _beats(candidates: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Which candidates rank at or above the positive: a higher or equal score, or a NaN on either side."""
    return (candidates >= positive) | candidates.isnan() | positive.isnan()


def hit_and_ndcg(ranks: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """HR@k and NDCG@k of each test case (He et al., 2017, Sec. 4.1): hit = rank < k,
    ndcg = 1 / log2(rank + 2) on a hit (one relevant item, so the ideal DCG is 1)."""
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks.to(torch.float64) + 2.0), torch.zeros((), dtype=torch.float64))
    return hit.to(torch.float64), ndcg


@dataclass(frozen=True)
class OwnRows:
    """Where evaluated devices' models differ from the shared model they start from (a sparse
    recommender's rows trained since the last push): entry j is item ``items[j]`` of evaluated device
    ``owner[j]`` (its position in ``DeviceModels.devices``), entries sorted by (owner, item), with its
    rows of every item table in ``rows``; ``dense`` holds every evaluated device's dense parameters."""

    owner: torch.Tensor
    items: torch.Tensor
    rows: ParamStack
    dense: ParamStack

    def lookup(self, owner: torch.Tensor, items: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For (owner, item) pairs of equal shape: whether each is an entry, and its entry index (0 if not)."""
        keys = self.owner * (num_items + 1) + self.items
        query = owner * (num_items + 1) + items
        at = torch.searchsorted(keys, query).clamp(max=max(0, len(keys) - 1))
        if not len(keys):
            return torch.zeros_like(query, dtype=torch.bool), at
        return keys[at] == query, at


@dataclass(frozen=True)
class DeviceModels:
    """The models some devices hold, split into what is shared and what is private.

    Device ``devices[e]`` holds shared model ``shared[row[e]]`` (a stack [K, ...])
    and its own private rows ``private[e]``; nothing here pairs one device's
    private rows with another's. ``own`` (if given) replaces rows of the shared
    model by the device's own (``OwnRows``), without a per-device item table.
    """

    shared: ParamStack
    row: torch.Tensor
    private: ParamStack
    devices: torch.Tensor
    own: OwnRows | None = None


@torch.no_grad()
def device_scores(
    model: Recommender,
    models: DeviceModels,
    data: InteractionFleet,
    *,
    every_item: bool = False,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each evaluated device's users' candidates, and the slot mask [E, U].

    Candidates are the test items [E, U, 1 + n] (the held-out item, then its
    sampled negatives) or, with ``every_item``, all items [E, U, I] in id order.
    """
    out = []
    dense_names = [name for name in models.shared if name not in model.tables]
    width = data.num_items if every_item else data.test_items.shape[-1]
    chunk_size = max(1, min(chunk_size, EVAL_PAIRS // max(1, data.slots * width)))
    for start in range(0, len(models.devices), chunk_size):
        devices = models.devices[start : start + chunk_size]
        row = models.row[start : start + chunk_size]
        if every_item:
            candidates = torch.arange(width).expand(len(devices), data.slots, width)  # [e, U, I]
        else:
            candidates = data.test_items[devices]  # [e, U, 1 + n]
        slots = torch.arange(data.slots).view(1, -1, 1).expand_as(candidates).flatten(1)
        flat_items = candidates.flatten(1)
        local = torch.arange(len(devices)).unsqueeze(1)
        gathered = {}
        for name, kind in model.tables.items():
            if kind == "user":
                gathered[name] = models.private[name][start : start + chunk_size][local, slots]
            else:
                gathered[name] = models.shared[name][row.unsqueeze(1), flat_items]
        dense = {name: models.shared[name][row] for name in dense_names}
        if models.own is not None:
            owner = torch.arange(start, start + len(devices)).unsqueeze(1).expand_as(flat_items)
            found, entry = models.own.lookup(owner, flat_items, data.num_items)
            for name, rows in models.own.rows.items():
                mask = found.view(*found.shape, *[1] * (rows.dim() - 1))
                gathered[name] = torch.where(mask, rows[entry], gathered[name])
            dense = {name: models.own.dense[name][start : start + len(devices)] for name in dense_names}
        out.append(score_rows(model, dense, gathered).view_as(candidates))
    return torch.cat(out), data.user_valid[models.devices]


def full_ranks(scores: torch.Tensor, test_item: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Rank (0 = top) of each held-out item among all items [..., I] the user has not trained on.

    ``scores`` and ``seen`` (the user's training items) are [..., I], ``test_item``
    [...]; items the user trained on are left out of the ranking, as is the
    held-out item itself; a tie or a NaN counts against it, as in :func:`rank_of_positive`.
    """
    positive = scores.gather(-1, test_item.unsqueeze(-1))
    competing = ~seen
    competing.scatter_(-1, test_item.unsqueeze(-1), False)
    return (_beats(scores, positive) & competing).sum(-1)


def metrics_of_ranks(ranks: torch.Tensor, valid: torch.Tensor, k: int = TOP_K, suffix: str = "") -> dict[str, float]:
    """Mean HR@k and NDCG@k over the valid test cases (every user weighs the same), named ``hr@k<suffix>``."""
    hit, ndcg = hit_and_ndcg(ranks, k)
    mask = valid.to(torch.float64)
    total = float(mask.sum())
    names = f"hr@{k}{suffix}", f"ndcg@{k}{suffix}"
    if total == 0:
        return dict.fromkeys(names, math.nan)
    return {names[0]: float((hit * mask).sum()) / total, names[1]: float((ndcg * mask).sum()) / total}


def ranking_metrics(scores: torch.Tensor, valid: torch.Tensor, k: int = TOP_K) -> dict[str, float]:
    """Mean HR@k and NDCG@k over the valid test cases, column 0 of ``scores`` the held-out item."""
    return metrics_of_ranks(rank_of_positive(scores), valid, k)


def evaluate_devices(model: nn.Module, models: DeviceModels, data: InteractionFleet) -> dict[str, float]:
    """HR@10 and NDCG@10 with the fleet's sampled negatives, each device scoring its own users;
    with ``data.full_ranking`` also ``hr@10_full``/``ndcg@10_full`` against every untrained item."""
    if not isinstance(model, Recommender):
        raise ClientsError(f"model.kind: interaction data needs a recommender model, got {type(model).__name__}")
    scores, valid = device_scores(model, models, data)
    metrics = ranking_metrics(scores, valid)
    if data.full_ranking:
        scores, valid = device_scores(model, models, data, every_item=True)
        ranks = full_ranks(scores, data.test_items[models.devices, :, 0], data.seen[models.devices])
        metrics |= metrics_of_ranks(ranks, valid, suffix=FULL_SUFFIX)
    return metrics


def popularity_metrics(data: InteractionFleet) -> dict[str, float]:
    """The popularity baseline: every user's candidates ranked by their training-interaction count
    (and, with ``data.full_ranking``, every untrained item)."""
    valid = torch.arange(data.capacity).unsqueeze(0) < data.counts.unsqueeze(1)
    popularity = torch.bincount(data.items[valid], minlength=data.num_items).to(torch.float64)
    metrics = ranking_metrics(popularity[data.test_items], data.user_valid)
    if data.full_ranking:
        scores = popularity.expand(*data.seen.shape)
        ranks = full_ranks(scores, data.test_items[..., 0], data.seen)
        metrics |= metrics_of_ranks(ranks, data.user_valid, suffix=FULL_SUFFIX)
    return metrics


@torch.no_grad()
def public_hit_rate(
    model: nn.Module, shared: ParamStack, data: InteractionFleet, public: torch.Tensor, *, chunk_size: int = 16
) -> np.ndarray:
    """HR@10 of each model of a shared stack [K, ...] on the public users (global (device, slot) pairs [P, 2]).

    A model has no embedding for a user it never trained, so the public user's
    private rows are folded in from the model's own item rows: the mean of the
    item embeddings of the user's training items (``Recommender.fold_in``).
    GUESS: KMA (E-Tree Algorithm 1) needs a per-device score on public data and
    the paper has only classifiers; this scores exactly the shared part a
    device would send.
    """
    if not isinstance(model, Recommender):
        raise ClientsError(f"model.kind: interaction data needs a recommender model, got {type(model).__name__}")
    device, slot = public[:, 0], public[:, 1]
    history = (data.users[device] == slot.unsqueeze(1)) & (
        torch.arange(data.capacity).unsqueeze(0) < data.counts[device].unsqueeze(1)
    )
    weights = torch.zeros(len(public), data.num_items)
    weights.index_put_(
        (torch.arange(len(public)).unsqueeze(1).expand_as(history)[history], data.items[device][history]),
        torch.ones(int(history.sum())),
        accumulate=True,
    )
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)  # [P, I]
    candidates = data.test_items[device, slot]  # [P, 1 + n]
    count = next(iter(shared.values())).shape[0]
    dense_names = [name for name in shared if name not in model.tables]
    out = np.empty(count)
    for start in range(0, count, chunk_size):
        part = {name: t[start : start + chunk_size] for name, t in shared.items()}
        rows = {name: part[name] for name, kind in model.tables.items() if kind == "item"}
        for name, source in model.fold_in().items():
            rows[name] = torch.einsum("pi,kid->kpd", weights, part[source])  # [k, P, dim]
        scores = model.candidate_scores({name: part[name] for name in dense_names}, rows, candidates)
        hit, _ = hit_and_ndcg(rank_of_positive(scores))
        out[start : start + len(scores)] = hit.mean(1).numpy()
    return out
