"""Compact federated recommenders: models, batched local training and ranking metrics.

Two models, each a template like the classifiers of :mod:`clients.models`
(parameters live in a stacked dict ``{name: [D, ...]}``):

* ``mf``: matrix factorisation with an item bias, trained with BPR (Rendle et
  al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009):
  one sampled negative per positive, loss -ln sigma(s_ui - s_uj) + l2 * (|p_u|^2
  + |q_i|^2 + |q_j|^2);
* ``ncf``: NeuMF, GMF and MLP towers fused by one output layer (He et al.,
  "Neural Collaborative Filtering", WWW 2017, Sec. 3.4), trained with binary
  cross-entropy on each positive and ``negatives`` sampled negatives (4 in the paper).

Embedding tables are indexed by *user slot* (a device's users are its slots
0..U-1) or by item. The user tables are **private**: they stay on their device,
protocols never send or average them (``Recommender.private``); item tables and
dense weights are shared. A device's user table therefore means its own users
only, and its scores need its own rows.

Training is one tensor program over devices, like :mod:`clients.training`:
each step gathers the embedding rows a batch touches ([D, b, ...]), runs the
model's score under ``vmap``, and scatters the rows' gradients back with
``index_put_`` (a sparse SGD step, equal to the dense one since untouched rows
get zero gradient, without [D, I, k] gradient tensors). Embedding rows take
per-sample SGD steps (the batch's gradients summed, as in Rendle et al.'s
LearnBPR), so their step does not shrink with batch size; dense weights take
the batch-mean step. Negatives are drawn on the device from counter-based
streams (:func:`clients.streams.hashed_uniform` on (seed, round, epoch, device,
position)), redrawn up to ``NEGATIVE_TRIES`` times while they hit the user's
training items.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from clients.errors import ClientsError
from clients.interactions import InteractionFleet
from clients.models import ParamStack, init_params
from clients.streams import hashed_uniform
from clients.training import epoch_order

RecommenderFactory = Callable[..., "Recommender"]
RECOMMENDERS: dict[str, RecommenderFactory] = {}

NEGATIVE_TRIES = 4  # draws per negative before keeping one that may be a training item
TOP_K = 10
FULL_SUFFIX = "_full"  # hr@10_full, ndcg@10_full: ranked against every untrained item, not 99 sampled
_NEGATIVE_STREAM = 0x4E47  # keeps negative sampling apart from the epoch-order stream
DEFAULT_CHUNK = 1024
EVAL_PAIRS = 1 << 20  # (user, item) pairs scored per evaluation chunk: bounds gathered rows to ~100 MB


class Recommender(nn.Module):
    """Scores (user, item) pairs from embedding rows gathered by the caller.

    ``tables`` maps each embedding parameter to what indexes it (``"user"`` or
    ``"item"``); ``private`` names the parameters that never leave a device;
    ``forward(rows)`` takes ``{table: rows [n, ...]}`` and returns scores [n],
    reading any dense weights from the module (``functional_call`` swaps them).
    """

    tables: dict[str, str]
    private: frozenset[str]
    loss: str  # "bpr" or "bce"
    negatives: int
    l2: float
    init_std: float

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_flops(self) -> int:
        """FLOPs (2 x multiply-adds) of scoring one pair."""
        raise NotImplementedError

    def fold_in(self) -> dict[str, str]:
        """For each private user table, the item table whose rows stand in for it (public scoring)."""
        return {name: name.replace("user", "item") for name, kind in self.tables.items() if kind == "user"}


def register_recommender(name: str) -> Callable[[RecommenderFactory], RecommenderFactory]:
    """Add a factory ``fn(users, items, **options) -> Recommender``; names are unique."""

    def add(factory: RecommenderFactory) -> RecommenderFactory:
        if name in RECOMMENDERS:
            raise ValueError(f"recommender {name!r} is registered twice")
        RECOMMENDERS[name] = factory
        return factory

    return add


class MatrixFactorisation(Recommender):
    """s(u, i) = p_u . q_i + b_i, trained with BPR."""

    private = frozenset({"user"})

    def __init__(self, users: int, items: int, dim: int, l2: float) -> None:
        super().__init__()
        self.tables = {"user": "user", "item": "item", "item_bias": "item"}
        self.loss, self.negatives, self.l2, self.init_std = "bpr", 1, l2, 0.1
        self.dim = dim
        self.user = nn.Parameter(torch.zeros(users, dim))
        self.item = nn.Parameter(torch.zeros(items, dim))
        self.item_bias = nn.Parameter(torch.zeros(items))

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return (rows["user"] * rows["item"]).sum(-1) + rows["item_bias"]

    def pair_flops(self) -> int:
        return 2 * self.dim + 1

    def fold_in(self) -> dict[str, str]:
        return {"user": "item"}


class NeuMF(Recommender):
    """NeuMF (He et al., 2017, Eq. 12): GMF p^G_u * q^G_i and an MLP over [p^M_u, q^M_i], fused."""

    private = frozenset({"gmf_user", "mlp_user"})

    def __init__(self, users: int, items: int, dim: int, layers: Sequence[int], negatives: int, l2: float) -> None:
        super().__init__()
        self.tables = {"gmf_user": "user", "gmf_item": "item", "mlp_user": "user", "mlp_item": "item"}
        self.loss, self.negatives, self.l2, self.init_std = "bce", negatives, l2, 0.01  # the paper's N(0, 0.01)
        mlp_dim = layers[0] // 2
        self.gmf_user = nn.Parameter(torch.zeros(users, dim))
        self.gmf_item = nn.Parameter(torch.zeros(items, dim))
        self.mlp_user = nn.Parameter(torch.zeros(users, mlp_dim))
        self.mlp_item = nn.Parameter(torch.zeros(items, mlp_dim))
        blocks: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(layers):
            blocks += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.mlp = nn.Sequential(*blocks)
        self.predict = nn.Linear(dim + layers[-1], 1)
        self._flops = 2 * dim + sum(2 * a * b for a, b in itertools.pairwise(layers))
        self._flops += 2 * (dim + layers[-1])

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        gmf = rows["gmf_user"] * rows["gmf_item"]
        mlp = self.mlp(torch.cat([rows["mlp_user"], rows["mlp_item"]], dim=-1))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def pair_flops(self) -> int:
        return self._flops


@register_recommender("mf")
def matrix_factorisation(users: int, items: int, *, dim: int = 32, l2: float = 0.0) -> Recommender:
    """BPR matrix factorisation; ``l2`` is BPR-Opt's per-sample regulariser on the rows touched."""
    if dim < 1 or not l2 >= 0:
        raise ClientsError(f"model.dim/model.l2: got {dim}/{l2}; need dim >= 1 and l2 >= 0")
    return MatrixFactorisation(users, items, dim, float(l2))


@register_recommender("ncf")
def neural_cf(
    users: int, items: int, *, dim: int = 8, layers: Sequence[int] = (32, 16, 8), negatives: int = 4, l2: float = 0.0
) -> Recommender:
    """NeuMF with GMF size ``dim`` and MLP widths ``layers`` (input = 2 x the MLP embedding size)."""
    widths = [int(w) for w in layers]
    if dim < 1 or len(widths) < 2 or min(widths) < 1 or widths[0] % 2:
        raise ClientsError(
            f"model.dim/model.layers: got {dim}/{list(layers)}; need dim >= 1 and >= 2 positive widths, the first even"
        )
    if negatives < 1 or not l2 >= 0:
        raise ClientsError(f"model.negatives/model.l2: got {negatives}/{l2}; need negatives >= 1 and l2 >= 0")
    return NeuMF(users, items, dim, widths, int(negatives), float(l2))


def build_recommender(kind: str, users: int, items: int, **options: Any) -> Recommender:
    """Build a registered recommender for ``users`` slots per device and ``items`` items."""
    if kind not in RECOMMENDERS:
        raise ClientsError(
            f"model.kind: {kind!r} is not a recommender; with interaction data choose one of: "
            f"{', '.join(sorted(RECOMMENDERS))}"
        )
    factory = RECOMMENDERS[kind]
    accepted = [p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for option in sorted(options):
        if option not in accepted:
            raise ClientsError(f"model.{option}: unknown option for model {kind!r}; allowed: {', '.join(accepted)}")
    return factory(users, items, **options)


def init_recommender(model: Recommender, seed: int) -> ParamStack:
    """One model's parameters: embeddings N(0, init_std), dense layers as :func:`clients.models.init_params`."""
    params = init_params(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for name in sorted(model.tables):
        params[name] = torch.randn(params[name].shape, generator=generator) * model.init_std
    if isinstance(model, MatrixFactorisation):
        params["item_bias"] = torch.zeros_like(params["item_bias"])
    return params


def split_private(stack: ParamStack, private: frozenset[str]) -> tuple[ParamStack, ParamStack]:
    """(shared, private) parts of a stack, same tensors."""
    return {k: v for k, v in stack.items() if k not in private}, {k: v for k, v in stack.items() if k in private}


# ---------------------------------------------------------------------------
# training


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


def _gather(
    params: ParamStack, model: Recommender, users: torch.Tensor, items: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Rows of every embedding table for pairs (users[d, n], items[d, n]): {table: [D, n, ...]}."""
    rows = torch.arange(users.shape[0]).unsqueeze(1)
    return {name: params[name][rows, users if kind == "user" else items] for name, kind in model.tables.items()}


def _scores(model: Recommender, dense: ParamStack, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scores [D, n] of each device's pairs from its dense weights and gathered rows."""
    return vmap(lambda p, r: functional_call(model, p, (r,)))(dense, rows)


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
            gathered = {k: v.requires_grad_(True) for k, v in _gather(params, model, flat_users, flat_items).items()}
            dense = {name: params[name].requires_grad_(True) for name in dense_names}
            scores = _scores(model, dense, gathered).view_as(pair_items)
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


# ---------------------------------------------------------------------------
# metrics


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
class DeviceModels:
    """The models some devices hold, split into what is shared and what is private.

    Device ``devices[e]`` holds shared model ``shared[row[e]]`` (a stack [K, ...])
    and its own private rows ``private[e]``; nothing here pairs one device's
    private rows with another's.
    """

    shared: ParamStack
    row: torch.Tensor
    private: ParamStack
    devices: torch.Tensor


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
        out.append(_scores(model, dense, gathered).view_as(candidates))
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
    model: nn.Module, shared: ParamStack, data: InteractionFleet, public: torch.Tensor, *, chunk_size: int = 64
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
        k = next(iter(part.values())).shape[0]
        gathered: dict[str, torch.Tensor] = {}
        for name, source in model.fold_in().items():
            folded = torch.einsum("pi,kid->kpd", weights, part[source])  # [k, P, dim]
            gathered[name] = folded.unsqueeze(2).expand(-1, -1, candidates.shape[1], -1).flatten(1, 2)
        for name, kind in model.tables.items():
            if kind == "item":
                gathered[name] = part[name][:, candidates.flatten()]
        dense = {name: part[name] for name in dense_names}
        scores = _scores(model, dense, gathered).view(k, *candidates.shape)
        hit, _ = hit_and_ndcg(rank_of_positive(scores))
        out[start : start + k] = hit.mean(1).numpy()
    return out
