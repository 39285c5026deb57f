"""Sparse item rows for the tree protocols' recommenders: a device trains and sends only the item rows
it touched, and each item row is averaged over the devices that sent it.

The rule (``item_merge = "touched"``, the default of ``fedavg``, ``etree``, ``hierfavg`` and
``grouped``) is federated collaborative filtering's: the server updates an item's factors from
the clients that rated it (FCF, Ammad-ud-din et al., arXiv:1901.09888, 2019, Sec. 3; FedRec,
Lin et al., IEEE Intelligent Systems 2020, uploads the rated and sampled items only). With BPR
and sampled negatives a device's local epochs change only the rows of its interactions and of the
negatives it drew, so it uploads those rows (``clients.recommendation.training.touched_items``),
their ids and its dense shared parameters; an item row nobody sent keeps its value. The plain
mean over every device (``item_merge = "dense"``) divides an item's update among all devices,
most of which never touched it; it stays available, on per-device item tables.

Per-row counts make the tree exact: a layer-1 head averages each row over its senders (weighted
by example counts when ``weighted``) and keeps, per row, the total weight it averaged since its
model was last overwritten from above; every head above averages its children's rows weighted by
those counts. So with ratios of 1 any tree gives the per-item mean over all senders, as a star
does. Dense shared parameters (NeuMF's MLP) average as the dense engine averages them.

No per-device item table exists: the devices of a cluster hold their cluster's model
(``models[0][k]``, which every push down overwrites), and a device's own rows, after rounds
without aggregation, are kept flat (:class:`clients.recommendation.metrics.OwnRows`). Training
hands each device a compact stack of its touched rows (grouped by width,
:func:`width_buckets`, to bound the padding), through the run's backend like any training.

Bytes: an upload carries its rows (every item table's width x 4 bytes), an int32 id per row and
its weight; a head's upload also a float32 count per row; a push down is the whole shared model
(a device samples negatives from, and ranks, every item; FCF's server sends the full item
matrix). ``[network] compression`` divides them as it divides whole models.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clients.params import ParamStack, replicate
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.metrics import DeviceModels, OwnRows
from clients.recommendation.models import Recommender
from clients.recommendation.training import ROWS, rows_of_mask, touched_items
from etree.engine.checkpoint import CheckpointError, expect, expect_tensor, stack_like
from etree.engine.workload import Workload
from etree.trees.aggregation import broadcast, segment_mean
from etree.trees.timing import MessageSizes
from etree.trees.tree import AggregationTree

ITEM_MERGES = ("touched", "dense")
INDEX_BYTES = 4  # an item id on the wire (int32)
COUNT_BYTES = 4  # a weight or per-row count on the wire (float32)
MAX_BUCKETS = 4  # training calls per round at most: padding to each group's widest costs <= 1.5x here


@dataclass(frozen=True)
class RowMessages:
    """Uploads of item rows, flat: entry j is item ``items[j]`` of message ``owner[j]``, entries sorted by
    (owner, item). Message m comes from device ``senders[m]``, counts ``weight[m]`` for each of its rows
    and carries its dense shared parameters ``dense[name][m]`` in full."""

    senders: torch.Tensor
    owner: torch.Tensor
    items: torch.Tensor
    rows: ParamStack
    weight: torch.Tensor
    dense: ParamStack

    def take(self, index: torch.Tensor) -> RowMessages:
        """Messages ``index`` (repeats allowed), renumbered in that order."""
        sizes = torch.bincount(self.owner, minlength=len(self.senders))
        starts = torch.cumsum(sizes, 0) - sizes
        counts = sizes[index]
        owner = torch.repeat_interleave(torch.arange(len(index)), counts)
        within = torch.arange(len(owner)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        entry = torch.repeat_interleave(starts[index], counts) + within
        return RowMessages(
            self.senders[index],
            owner,
            self.items[entry],
            {k: v[entry] for k, v in self.rows.items()},
            self.weight[index],
            {k: v[index] for k, v in self.dense.items()},
        )

    @staticmethod
    def cat(parts: Sequence[RowMessages]) -> RowMessages:
        """One set of messages, ``parts`` one after the other."""
        offsets = np.cumsum([0] + [len(p.senders) for p in parts])
        first = parts[0]
        return RowMessages(
            torch.cat([p.senders for p in parts]),
            torch.cat([p.owner + int(o) for p, o in zip(parts, offsets, strict=False)]),
            torch.cat([p.items for p in parts]),
            {k: torch.cat([p.rows[k] for p in parts]) for k in first.rows},
            torch.cat([p.weight for p in parts]),
            {k: torch.cat([p.dense[k] for p in parts]) for k in first.dense},
        )


Level = tuple[ParamStack, torch.Tensor]  # the models of one layer's aggregators and their per-row counts


def merge_messages(
    messages: RowMessages, segments: torch.Tensor, reference: ParamStack, counts: torch.Tensor, tables: Sequence[str]
) -> Level:
    """Aggregate messages into ``len(counts)`` models: message m into ``segments[m]``.

    Each item row of ``tables`` is the mean of the rows sent for it, weighted by the messages'
    weights; a row nobody sent keeps ``reference``'s. Dense parameters are the weighted mean of the
    segment's messages, ``reference``'s where none arrived. Counts add the weights averaged.
    """
    heads, items = counts.shape
    segment, weight = segments[messages.owner], messages.weight[messages.owner]
    total = torch.zeros(heads, items).index_put_((segment, messages.items), weight, accumulate=True)
    heard = total > 0
    out: ParamStack = {}
    for name in tables:
        ref, rows = reference[name], messages.rows[name]
        tail = (1,) * (ref.dim() - 2)
        sums = torch.zeros_like(ref).index_put_(
            (segment, messages.items), rows * weight.view(-1, *tail), accumulate=True
        )
        out[name] = torch.where(
            heard.view(heads, items, *tail), sums / total.clamp(min=1e-30).view(heads, items, *tail), ref
        )
    dense_names = [name for name in reference if name not in tables]
    if dense_names:
        said = torch.zeros(heads, dtype=torch.bool)
        said[segments] = True
        mean = segment_mean({name: messages.dense[name] for name in dense_names}, segments, heads, messages.weight)
        for name in dense_names:
            mask = said.view(-1, *(1,) * (reference[name].dim() - 1))
            out[name] = torch.where(mask, mean[name], reference[name])
    return out, counts + total


def merge_tables(
    level: Level,
    parents: torch.Tensor,
    reference: ParamStack,
    counts: torch.Tensor,
    sizes: torch.Tensor | None,
    tables: Sequence[str],
) -> Level:
    """The layer above ``level``: each item row the count-weighted mean of the children's rows (a
    row no child counts keeps ``reference``'s), dense parameters the mean of the children's
    (weighted by ``sizes``, or plain), counts added."""
    models, child_counts = level
    above, items = counts.shape
    total = torch.zeros(above, items).index_add_(0, parents, child_counts)
    heard = total > 0
    out: ParamStack = {}
    for name in tables:
        tail = (1,) * (reference[name].dim() - 2)
        sums = torch.zeros_like(reference[name]).index_add_(
            0, parents, models[name] * child_counts.view(-1, items, *tail)
        )
        mean = sums / total.clamp(min=1e-30).view(above, items, *tail)
        out[name] = torch.where(heard.view(above, items, *tail), mean, reference[name])
    dense_names = [name for name in reference if name not in tables]
    if dense_names:
        out |= segment_mean({name: models[name] for name in dense_names}, parents, above, sizes)
    return out, counts + total


def width_buckets(widths: np.ndarray, most: int = MAX_BUCKETS, candidates: int = 256) -> list[np.ndarray]:
    """Positions grouped into at most ``most`` groups of similar width, so that padding every group to its
    widest costs least: a dynamic programme over the widths sorted widest first, groups ending where the
    width changes (at ``candidates`` such places at most, evenly spread)."""
    order = np.argsort(-widths, kind="stable")
    w = widths[order].astype(np.float64)
    if not len(w):
        return []
    ends = np.flatnonzero(np.r_[w[1:] != w[:-1], True]) + 1  # prefix lengths where the width changes
    if len(ends) > candidates:
        ends = ends[np.linspace(0, len(ends) - 1, candidates).round().astype(np.int64)]
    bounds = np.r_[0, ends]  # a group is order[bounds[a]:bounds[b]], padded to its first width
    a, b = np.meshgrid(np.arange(len(bounds)), np.arange(len(bounds)), indexing="ij")
    widest = w[np.minimum(bounds[a], len(w) - 1)]
    pad = np.where(a < b, (bounds[b] - bounds[a]) * widest, np.inf)  # [a, b]: one group from a to b
    best = [pad[0]]  # best[g - 1][b]: the cheapest g groups covering order[:bounds[b]]
    arg: list[np.ndarray] = []
    for _ in range(1, min(most, len(ends))):
        total = np.r_[np.inf, best[-1][1:]][:, None] + pad  # g - 1 groups up to bounds[a], then one to b
        arg.append(np.argmin(total, axis=0))
        best.append(total[arg[-1], np.arange(len(bounds))])
    groups = int(np.argmin([row[-1] for row in best]))  # index: that many groups less one
    edges, end = [0, len(bounds) - 1], len(bounds) - 1
    for g in range(groups, 0, -1):
        end = int(arg[g - 1][end])
        edges.append(end)
    return [order[bounds[x] : bounds[y]] for x, y in itertools.pairwise(sorted(set(edges)))]


class SparseRows:
    """The models a tree protocol's devices hold for a recommender, with sparse item rows (see the
    module docstring): the layers' models and per-row counts, the public nodes' merged model, the
    devices' own rows since the last push, their private rows, and late uploads kept for later."""

    def __init__(self, workload: Workload, tree: AggregationTree, *, weighted: bool, public_merge: str) -> None:
        model, data = workload.model, workload.data
        assert isinstance(model, Recommender) and isinstance(data, InteractionFleet)
        self.workload = workload
        self.data = data
        self.num_items = data.num_items
        self.tables = sorted(name for name, kind in model.tables.items() if kind == "item")
        shared = workload.shared(workload.initial)
        self.dense_names = sorted(name for name in shared if name not in model.tables)
        self.weighted = weighted
        self.public_merge = public_merge
        self.depth = tree.depth
        self.ancestors = [torch.from_numpy(tree.ancestors(layer)) for layer in range(1, tree.depth + 1)]
        self.parents = [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in tree.parents]
        self.sizes = [len(heads) for heads in tree.heads]
        self.public = torch.from_numpy(np.asarray(tree.public, dtype=np.int64))
        devices = workload.devices
        self.weight = workload.data.counts.to(torch.float32) if weighted else torch.ones(devices)
        row = sum(shared[name][0].numel() * shared[name].element_size() for name in self.tables)
        self.row_bytes = row + INDEX_BYTES
        self.dense_bytes = sum(shared[name].numel() * shared[name].element_size() for name in self.dense_names)
        self.models = [replicate(shared, count) for count in self.sizes]
        self.counts = [torch.zeros(count, self.num_items) for count in self.sizes]
        self.public_model: ParamStack | None = None  # what public nodes hold when it is not their cluster's
        self.own: OwnRows | None = None  # devices' own rows since the last push (owner: device id)
        self.private = replicate({name: workload.initial[name] for name in sorted(workload.private)}, devices)
        self.stale: RowMessages | None = None
        self._plan: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._sent: dict[tuple[int, int], torch.Tensor] = {}

    # -- the models devices start from -----------------------------------------
    def _base(self) -> tuple[ParamStack, torch.Tensor]:
        """The shared models devices start from (their layer-1 cluster's; public nodes the merged one)
        and each device's row among them."""
        groups = self.ancestors[0].clone()
        if self.public_model is None:
            return self.models[0], groups
        groups[self.public] = self.sizes[0]
        return {k: torch.cat([v, self.public_model[k]]) for k, v in self.models[0].items()}, groups

    def held(self, layer: int) -> tuple[ParamStack, torch.Tensor]:
        """The distinct shared models devices hold after a push from ``layer`` (0: the models they start
        from, their own rows aside) and each device's row among them."""
        if layer == 0:
            return self._base()
        groups = self.ancestors[layer - 1].clone()
        models = self.models[layer - 1]
        if self.public_model is not None:
            groups[self.public] = self.sizes[layer - 1]
            models = {k: torch.cat([v, self.public_model[k]]) for k, v in models.items()}
        return models, groups

    def device_models(self, layer: int) -> DeviceModels:
        shared, groups = self.held(layer)
        own = self.own if layer == 0 else None
        return DeviceModels(shared, groups, self.private, torch.arange(self.workload.devices), own)

    # -- a round ----------------------------------------------------------------
    def plan(self, active: torch.Tensor, round_index: int) -> MessageSizes:
        """The rows each active device will train and send this round, and what the round's uploads weigh."""
        workload = self.workload
        rows = touched_items(
            workload.model,
            self.data,
            active,
            workload.train.local_epochs,
            seed=workload.seed,
            round_index=round_index,
        )
        if self.own is not None:  # rows a device changed in earlier rounds without aggregation go up too
            mask = torch.zeros(len(active), self.num_items + 1, dtype=torch.bool)
            mask[torch.arange(len(active)).unsqueeze(1).expand_as(rows), rows] = True
            position = torch.full((workload.devices,), -1, dtype=torch.int64)
            position[active] = torch.arange(len(active))
            mine = position[self.own.owner] >= 0
            mask[position[self.own.owner[mine]], self.own.items[mine]] = True
            rows = rows_of_mask(mask[:, : self.num_items])
        self._plan = (round_index, active, rows)
        self._sent = {}
        widths = (rows < self.num_items).sum(1).numpy()
        uploads = self._wire(widths * self.row_bytes + self.dense_bytes + COUNT_BYTES)
        return MessageSizes(uploads, self._aggregate_bytes)

    def _wire(self, raw: np.ndarray) -> np.ndarray:
        return np.maximum(1, np.round(raw / self.workload.network.compression)).astype(np.int64)

    def _aggregate_bytes(self, level: int, k: int, parts: np.ndarray) -> int:
        """Bytes of aggregator k of layer level+1's upload: its rows with a count after this round's merge."""
        mask = self.counts[level][k] > 0
        if level == 0:
            assert self._plan is not None
            rows = self._plan[2][torch.from_numpy(parts)].flatten()
            mask[rows[rows < self.num_items]] = True
            if self.stale is not None:
                home = self.ancestors[0][self.stale.senders][self.stale.owner] == k
                mask[self.stale.items[home]] = True
        else:
            for child in parts.tolist():
                mask |= self._sent.get((level - 1, child), self.counts[level - 1][child] > 0)
        self._sent[(level, k)] = mask
        raw = int(mask.sum()) * (self.row_bytes + COUNT_BYTES) + self.dense_bytes
        return int(self._wire(np.array([raw]))[0])

    def train(self, active: torch.Tensor, round_index: int) -> RowMessages:
        """Local training of the active devices from the models they hold, on compact stacks of the rows
        :meth:`plan` chose; their private rows are kept, what they upload is returned."""
        if self._plan is None or self._plan[0] != round_index or not torch.equal(self._plan[1], active):
            self.plan(active, round_index)
        assert self._plan is not None
        rows = self._plan[2]
        base, groups = self._base()
        widths = (rows < self.num_items).sum(1)
        parts: list[tuple[torch.Tensor, torch.Tensor, ParamStack]] = []
        dense: ParamStack = {}
        private: ParamStack = {}
        for bucket in width_buckets(widths.numpy()):
            position = torch.from_numpy(bucket)
            device = active[position]
            ids = rows[position, : max(1, int(widths[position].max()))]
            safe, group = ids.clamp(max=self.num_items - 1), groups[device].unsqueeze(1)
            stack = {name: base[name][group, safe] for name in self.tables}
            if self.own is not None:
                found, entry = self.own.lookup(device.unsqueeze(1).expand_as(ids), ids, self.num_items)
                for name in self.tables:
                    mask = found.view(*found.shape, *(1,) * (stack[name].dim() - 2))
                    stack[name] = torch.where(mask, self.own.rows[name][entry], stack[name])
            if self.own is not None:
                stack |= {name: self.own.dense[name][device] for name in self.dense_names}
            else:
                stack |= {name: base[name][groups[device]] for name in self.dense_names}
            stack |= {name: tensor[device] for name, tensor in self.private.items()}
            stack[ROWS] = ids
            trained = self.workload.train_devices(stack, device, round_index)
            valid = ids < self.num_items
            owner = position.unsqueeze(1).expand_as(ids)[valid]
            parts.append((owner, ids[valid], {name: trained[name][valid] for name in self.tables}))
            for name in self.dense_names:
                dense.setdefault(name, torch.empty(len(active), *trained[name].shape[1:]))[position] = trained[name]
            for name in self.private:
                private.setdefault(name, torch.empty(len(active), *trained[name].shape[1:]))[position] = trained[name]
        for name, tensor in private.items():  # private rows never travel: a lost upload does not undo them
            self.private[name][active] = tensor
        owner = torch.cat([p[0] for p in parts])
        items = torch.cat([p[1] for p in parts])
        order = torch.argsort(owner * (self.num_items + 1) + items)
        return RowMessages(
            active,
            owner[order],
            items[order],
            {name: torch.cat([p[2][name] for p in parts])[order] for name in self.tables},
            self.weight[active],
            dense,
        )

    def hold_own(self, sent: RowMessages) -> None:
        """After local epochs only: the devices that trained hold what they trained (their rows kept flat)."""
        if self.own is None:
            base, groups = self._base()
            own_dense = {name: base[name][groups] for name in self.dense_names}
            kept = OwnRows(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), {}, own_dense)
            kept_rows: ParamStack = {name: torch.zeros(0, *base[name].shape[2:]) for name in self.tables}
        else:
            stays = ~torch.isin(self.own.owner, sent.senders)
            kept = OwnRows(self.own.owner[stays], self.own.items[stays], {}, self.own.dense)
            kept_rows = {name: rows[stays] for name, rows in self.own.rows.items()}
        owner = torch.cat([kept.owner, sent.senders[sent.owner]])
        items = torch.cat([kept.items, sent.items])
        order = torch.argsort(owner * (self.num_items + 1) + items)
        dense = {name: tensor.clone() for name, tensor in kept.dense.items()}
        for name in self.dense_names:
            dense[name][sent.senders] = sent.dense[name]
        rows = {name: torch.cat([kept_rows[name], sent.rows[name]])[order] for name in self.tables}
        self.own = OwnRows(owner[order], items[order], rows, dense)

    def keep_stale(self, late: RowMessages) -> None:
        """Hold late uploads for the next aggregation (a device's newer late upload replaces its older one)."""
        if self.stale is not None:
            old = torch.from_numpy(np.flatnonzero(~torch.isin(self.stale.senders, late.senders).numpy()))
            late = RowMessages.cat([self.stale.take(old), late])
        self.stale = late

    def aggregate(self, fresh: RowMessages | None, top: int, *, stale: bool = False) -> list[Level]:
        """Models and counts of layers 1..top from ``fresh`` uploads (public nodes' into every cluster;
        with ``stale``, held late uploads join their home cluster's and are used up)."""
        parts, segments = [], []
        if fresh is not None and len(fresh.senders):
            clusters = self.ancestors[0][fresh.senders]
            index = torch.arange(len(fresh.senders))
            guest = torch.isin(fresh.senders, self.public)
            if bool(guest.any()):  # a public node's upload joins every cluster
                others = torch.arange(self.sizes[0])
                pairs = [(i, k) for i in index[guest].tolist() for k in others.tolist() if k != int(clusters[i])]
                if pairs:
                    extra = torch.tensor(pairs, dtype=torch.int64)
                    index, clusters = torch.cat([index, extra[:, 0]]), torch.cat([clusters, extra[:, 1]])
            parts.append(fresh.take(index))
            segments.append(clusters)
        if stale and self.stale is not None:
            parts.append(self.stale)
            segments.append(self.ancestors[0][self.stale.senders])
            self.stale = None
        current: Level = (self.models[0], self.counts[0])
        # what each cluster weighs above (when weighted): its uploads' weights; with none, its members'
        sizes = torch.zeros(self.sizes[0]).index_add_(0, self.ancestors[0], self.weight)
        if parts:
            messages = RowMessages.cat(parts)
            segment = torch.cat(segments)
            current = merge_messages(messages, segment, self.models[0], self.counts[0], self.tables)
            sizes = torch.zeros(self.sizes[0]).index_add_(0, segment, messages.weight)
        levels = [current]
        for level in range(1, top):
            current = merge_tables(
                current,
                self.parents[level],
                self.models[level],
                self.counts[level],
                sizes if self.weighted else None,
                self.tables,
            )
            sizes = torch.zeros(self.sizes[level]).index_add_(0, self.parents[level], sizes)
            levels.append(current)
        return levels

    def push(self, levels: list[Level], top: int) -> None:
        """The top layer's models go down its subtrees: every layer below, and every device, holds them."""
        self.models[top - 1], self.counts[top - 1] = levels[top - 1]
        index = torch.arange(self.sizes[top - 1])
        for level in range(top - 2, -1, -1):  # index: each layer-(level+1) aggregator's top ancestor
            index = index[self.parents[level + 1]]
            self.models[level] = broadcast(self.models[top - 1], index)
            self.counts[level] = torch.zeros(self.sizes[level], self.num_items)
        self.public_model = None
        if len(self.public) and self.public_merge == "mean" and top < self.depth:
            # each public node hears all K heads and keeps the plain mean of what they push down
            self.public_model = {k: v.mean(0, keepdim=True) for k, v in self.models[0].items()}
        self.own = None

    def root_model(self) -> ParamStack:
        """The model the root would hold if it aggregated every device's model now, as a stack of one:
        the devices' own rows (if any) merged at layer 1, then every layer up; nothing is kept."""
        everyone = None
        if self.own is not None:
            devices = torch.arange(self.workload.devices)
            everyone = RowMessages(devices, self.own.owner, self.own.items, self.own.rows, self.weight, self.own.dense)
        stale, self.stale = self.stale, None
        try:
            return self.aggregate(everyone, self.depth)[-1][0]
        finally:
            self.stale = stale

    # -- checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        own = None
        if self.own is not None:
            own = {"owner": self.own.owner, "items": self.own.items, "rows": self.own.rows, "dense": self.own.dense}
        stale = None
        if self.stale is not None:
            s = self.stale
            stale = {"senders": s.senders, "owner": s.owner, "items": s.items, "rows": s.rows, "weight": s.weight}
            stale["dense"] = s.dense
        return {
            "models": list(self.models),
            "counts": list(self.counts),
            "public_model": self.public_model,
            "own": own,
            "private": self.private,
            "stale": stale,
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "rows") -> None:
        shared = self.workload.shared(self.workload.initial)
        models = expect(state["models"], list, f"{where}.models")
        counts = expect(state["counts"], list, f"{where}.counts")
        if len(models) != self.depth or len(counts) != self.depth:
            raise CheckpointError(f"{where}.models: got {len(models)} layer(s), the tree has {self.depth}")
        self.models = [
            stack_like(m, shared, f"{where}.models[{i}]", rows=n)
            for i, (m, n) in enumerate(zip(models, self.sizes, strict=True))
        ]
        self.counts = [
            expect_tensor(c, f"{where}.counts[{i}]", torch.float32, (n, self.num_items))
            for i, (c, n) in enumerate(zip(counts, self.sizes, strict=True))
        ]
        public = state["public_model"]
        self.public_model = None if public is None else stack_like(public, shared, f"{where}.public_model", rows=1)
        private = {name: self.workload.initial[name] for name in sorted(self.workload.private)}
        self.private = stack_like(state["private"], private, f"{where}.private", rows=self.workload.devices)
        self.own = None if state["own"] is None else self._own_from(expect(state["own"], dict, f"{where}.own"), where)
        self.stale = None
        if state["stale"] is not None:
            self.stale = self._stale_from(expect(state["stale"], dict, f"{where}.stale"), where)
        self._plan = None

    def _entries(self, raw: dict[str, Any], where: str) -> tuple[torch.Tensor, torch.Tensor, ParamStack]:
        items = expect_tensor(raw["items"], f"{where}.items", torch.int64, (None,))
        owner = expect_tensor(raw["owner"], f"{where}.owner", torch.int64, (len(items),))
        shared = self.workload.shared(self.workload.initial)
        rows = stack_like(
            raw["rows"], {name: shared[name][0] for name in self.tables}, f"{where}.rows", rows=len(items)
        )
        if len(items) and (items.min() < 0 or items.max() >= self.num_items):
            raise CheckpointError(f"{where}.items: item ids must lie in 0..{self.num_items - 1}")
        return owner, items, rows

    def _own_from(self, raw: dict[str, Any], where: str) -> OwnRows:
        owner, items, rows = self._entries(raw, f"{where}.own")
        shared = self.workload.shared(self.workload.initial)
        dense = stack_like(
            raw["dense"], {n: shared[n] for n in self.dense_names}, f"{where}.own.dense", rows=self.workload.devices
        )
        return OwnRows(owner, items, rows, dense)

    def _stale_from(self, raw: dict[str, Any], where: str) -> RowMessages:
        owner, items, rows = self._entries(raw, f"{where}.stale")
        senders = expect_tensor(raw["senders"], f"{where}.stale.senders", torch.int64, (None,))
        weight = expect_tensor(raw["weight"], f"{where}.stale.weight", torch.float32, (len(senders),))
        shared = self.workload.shared(self.workload.initial)
        dense = stack_like(
            raw["dense"], {n: shared[n] for n in self.dense_names}, f"{where}.stale.dense", rows=len(senders)
        )
        return RowMessages(senders, owner, items, rows, weight, dense)
