"""Synchronous aggregation over a tree: the round engine of E-Tree, HierFAVG, grouped and FedAvg.

One round (E-Tree paper, Sec. III; the authors' ``ETreeLearningProtocol``):
every participating device trains one local epoch; each layer-1 head averages
its cluster (itself included); layer l >= 2 aggregates only on rounds where
``round % prod(ratios[:l]) == 0``; the highest layer that aggregated pushes its
model down its subtree, overwriting the models below. FedAvg is the one-layer
tree with ratio 1 whose head is the server.

Public nodes (E-Tree paper, Fig. 5 and Algorithm 2) belong to every layer-1
cluster: each trains once per round, its model enters every head's average
(one duplicated row per extra cluster in the segment mean) and its messages
to and from the other heads are counted. On the way down it takes the plain
mean of the K cluster models (``public_merge="mean"``) or its home cluster's
model (``"home"``); both are GUESSes, the paper does not say.

Numerics are batched (segment means over the device stack; a recommender's item rows, by
default, are sparse uploads averaged per item over their senders, ``etree.trees.sparse_rows``,
with no per-device item table); timing runs on
the protocol run's simpy clock (``etree.trees.timing``): a head starts
aggregating when its slowest expected child has arrived, and the network
decides which updates make it (dropout, deadlines, crashes). Only delivered
updates are averaged; a device whose update was lost takes the model pushed
down, as if it had not trained. ``failover`` (E-Tree) replaces a crashed head
by the next delay-medoid of its cluster; without it the cluster is lost.

What is scored is what devices hold (``Protocol.evaluate``): after a push from
layer l every device holds its layer-l ancestor's model (the global model after
a root aggregation, its cluster's model after a cluster aggregation; public
nodes the mean of the cluster models, or their home cluster's), and after a
round without aggregation its own. Those distinct models are evaluated once
each, weighted by how many devices hold them. The model the root would hold if
it aggregated now, which no device holds between root aggregations, is only
``root_accuracy`` (the authors' simulator logs accuracy when the root has
aggregated and broadcast; there the two agree).

Checkpoints (``state_dict``): the tree as failover left it, which clusters are
lost, the model stack, which layer's models the devices hold, late updates held
for the next aggregation, the root's last model once it is gone, the root's server
optimizer (its moments and the model it last pushed down, ``etree.trees.server_opt``), the per-link
message counts and the structure's description (``tree.json``; E-Tree's comes
from its builder, which a resumed run never calls: KMA and its pre-training are
not rerun). Everything else (ancestor
indices, public-node rows, weights, path costs) is derived again from the tree
and the workload. ``tree_state``/``tree_from_state`` and ``timing_state``/
``load_timing_state`` are shared with the Flower adapter, which times rounds the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch

from clients.classification.evaluation import evaluate_models
from clients.params import ParamStack, replicate, select
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.metrics import DeviceModels, evaluate_devices
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import CheckpointError, expect, expect_array, expect_ids, expect_tensor, stack_like
from etree.engine.protocol import Protocol, RoundCost
from etree.engine.sampling import participants
from etree.engine.workload import Workload
from etree.network.links import LinkLedger, LinkLoad
from etree.network.model import NetworkModel
from etree.trees.aggregation import broadcast, segment_mean
from etree.trees.server_opt import (
    ServerOptimizer,
    initial_state,
    opt_state_dict,
    opt_state_from_dict,
    server_step,
)
from etree.trees.sparse_rows import ITEM_MERGES, SparseRows
from etree.trees.timing import TreeTiming, round_bytes, round_messages
from etree.trees.tree import AggregationTree

TreeBuilder = Callable[[Workload, NetworkModel], AggregationTree]
LocalObjective = Literal["sgd", "fedprox"]  # a tree protocol's ``local`` option (FedProx: Li et al. 2020)
LOCAL_OBJECTIVES: tuple[str, ...] = get_args(LocalObjective)


class TreeProtocol(Protocol):
    """Hierarchical synchronous aggregation over the tree that ``build_tree`` returns.

    ``ratios[l]`` is how many layer-l aggregations happen per layer-(l+1) one
    (``ratios[0]`` is local epochs per layer-1 aggregation, normally 1).
    ``weighted`` averages by example counts instead of the paper's plain mean.
    ``participation`` is the fraction of devices sampled to train each round.
    ``top_aggregates=False`` never aggregates the top layer (grouped aggregation).
    ``public_merge`` is how the tree's public nodes take the models coming
    down (``"mean"`` of the K cluster models, or their ``"home"`` cluster's).
    ``describe``, if given, replaces ``tree.to_dict()`` as ``structure()``.
    ``aggregators_train=False``: devices that are aggregators (FedAvg's server
    when it is a device) neither train nor join the averages; they still
    receive, and hold, the model pushed down.
    ``local`` is the devices' local objective: ``"sgd"``, or ``"fedprox"``, which adds
    FedProx's proximal term mu/2 ||w - w_received||^2 (Li et al., MLSys 2020, Eq. 2) with
    ``mu`` (unused with ``"sgd"``); classifiers only.
    ``server_opt`` steps the root's model with a server optimizer (FedAvgM, FedAdam, FedYogi,
    FedAdagrad: ``etree.trees.server_opt``) at every root aggregation, the pseudo-gradient being the
    aggregate minus the model the root last pushed down (the initial model before the first); the
    layers below average as they would without it. A top that never aggregates refuses one.
    ``models_per_message`` is how many models one message carries (SCAFFOLD's 2: a model
    and a control variate), so bytes and transfer times count all of them.
    ``item_merge`` is how a recommender's item rows are aggregated: ``"touched"`` (devices send only
    the rows they trained, each row averaged over its senders, FCF; ``etree.trees.sparse_rows``,
    without per-device item tables) or ``"dense"`` (whole models averaged, as for any model).
    """

    models_per_message = 1

    def __init__(
        self,
        label: str,
        build_tree: TreeBuilder,
        *,
        ratios: Sequence[int] | None = None,
        weighted: bool = False,
        participation: float = 1.0,
        top_aggregates: bool = True,
        public_merge: str = "mean",
        describe: Callable[[], dict[str, Any]] | None = None,
        failover: bool = False,
        aggregators_train: bool = True,
        local: LocalObjective = "sgd",
        mu: float = 0.01,
        server_opt: ServerOptimizer | None = None,
        item_merge: str = "touched",
    ) -> None:
        super().__init__(label)
        if item_merge not in ITEM_MERGES:
            raise ProtocolError(
                f"protocols.{label}.item_merge: got {item_merge!r}; choose one of: {', '.join(ITEM_MERGES)}"
            )
        if server_opt is not None and not top_aggregates:
            raise ProtocolError(
                f"protocols.{label}.server_opt: got {server_opt.kind!r}; the top layer never aggregates, so there "
                f"is no root step for a server optimizer to take"
            )
        if ratios is not None and any(int(r) < 1 for r in ratios):
            raise ProtocolError(f"protocols.{label}.ratios: got {list(ratios)}; every ratio must be >= 1")
        if not 0 < participation <= 1:
            raise ProtocolError(f"protocols.{label}.participation: got {participation}; must be in (0, 1]")
        if public_merge not in ("mean", "home"):
            raise ProtocolError(f"protocols.{label}.public_merge: got {public_merge!r}; choose 'mean' or 'home'")
        if local not in LOCAL_OBJECTIVES:
            raise ProtocolError(f"protocols.{label}.local: got {local!r}; choose one of: {', '.join(LOCAL_OBJECTIVES)}")
        if not mu >= 0:
            raise ProtocolError(f"protocols.{label}.mu: got {mu}; FedProx's mu must be >= 0")
        self._build_tree = build_tree
        self._ratios = None if ratios is None else [int(r) for r in ratios]
        self._weighted = weighted
        self._participation = participation
        self._top_aggregates = top_aggregates
        self._public_merge = public_merge
        self._describe = describe
        self._failover = failover
        self._aggregators_train = aggregators_train
        self._local = local
        self._mu = float(mu)
        self._server_opt = server_opt
        self._item_merge = item_merge

    # -- hooks -------------------------------------------------------------
    def setup(self, workload: Workload) -> None:
        self.workload = workload
        if self._local == "fedprox" and workload.recommender:
            raise ProtocolError(
                f"protocols.{self.label}.local: got 'fedprox'; a recommender's sparse row updates have no "
                f"proximal term here: use local = 'sgd'"
            )
        self.network = NetworkModel(workload.graph)
        self._attach(self._build_tree(workload, self.network))
        self.params = {} if self.sparse is not None else replicate(workload.initial, workload.devices)
        self._held_layer = self.tree.depth  # devices hold the layer-l models (0: their own); all start alike
        self._stale: tuple[torch.Tensor, ParamStack] | None = None  # late updates kept for the next aggregation
        self._frozen: ParamStack | None = None  # the root's last model, once the root is lost for good
        # the server optimizer's moments and the model the root last pushed down (initially the initial model)
        shared = {k: v.unsqueeze(0) for k, v in workload.shared(workload.initial).items()}
        self._opt_state = None if self._server_opt is None else initial_state(self._server_opt, shared)
        # the builder's description (it alone knows how the tree came about), kept as the checkpoint keeps it
        self._description = self._describe() if self._describe is not None else None

    def _attach(self, tree: AggregationTree) -> None:
        """Take ``tree`` and derive what the rounds read from it (set-up and ``load_state_dict``)."""
        workload = self.workload
        self.tree = tree
        ratios = self._ratios or [1] * self.tree.depth
        if len(ratios) != self.tree.depth:
            raise ProtocolError(
                f"protocols.{self.label}.ratios: got {ratios} for a tree of {self.tree.depth} layer(s); "
                f"give one ratio per layer"
            )
        self.period = np.cumprod(ratios)  # layer l+1 aggregates every period[l] rounds
        self.network.prepare(int(h) for heads in self.tree.heads for h in heads)
        self.ancestors = [torch.from_numpy(self.tree.ancestors(layer)) for layer in range(1, self.tree.depth + 1)]
        self.weights = workload.data.counts.to(torch.float32) if self._weighted else None
        self._setup_public()
        size = self.models_per_message * workload.wire_bytes
        self.ledger = LinkLedger(self.network, size)
        self.timing = TreeTiming(self.tree, self.network, self.clock, size, failover=self._failover, ledger=self.ledger)
        self.sparse: SparseRows | None = None  # a recommender's item rows, sparse (``item_merge = "touched"``)
        if workload.recommender and self._item_merge == "touched":
            self.sparse = SparseRows(workload, tree, weighted=self._weighted, public_merge=self._public_merge)

    def run_round(self, round_index: int) -> RoundCost:
        active = self._participants(round_index)
        ids = active.numpy()
        if self.workload.network.dropout > 0 or self.clock.dead or self.timing.lost[0]:
            keep = ~self.clock.dropped(self.workload.seed, round_index, ids) & self.clock.alive_mask(ids)
            ids = ids[keep & ~self.timing.orphaned(ids)]  # dropped, crashed and cut-off devices sit it out
            active = torch.from_numpy(ids)
        top = self._top_layer(round_index)
        public_down = self._public_merge == "mean" and top < self.tree.depth
        sizes = self.sparse.plan(active, round_index) if self.sparse is not None and top and len(ids) else None
        if self.workload.network.timing:
            compute = self.network.compute_s(ids, self.workload.epoch_flops[ids])
            outcome = self.timing.run_round(ids, compute, top, public_down, sizes)
            self.tree = self.timing.tree
            duration, messages, top = outcome.duration_s, outcome.messages, outcome.top
            delivered, late = outcome.delivered, outcome.late
            sent = messages * self.timing.size if sizes is None else outcome.bytes_sent
        else:
            duration, messages = 0.0, round_messages(self.tree, ids, top, public_down)
            delivered, late = np.ones(len(ids), dtype=bool), np.zeros(len(ids), dtype=bool)
            sent = messages * self.timing.size
            if sizes is not None:
                sent = round_bytes(self.tree, ids, top, public_down, sizes, self.timing.down_size)
        cost = RoundCost(duration, sent, messages, clocked=True)
        if self.sparse is not None:
            return self._rows_round(cost, active, delivered, late, top, round_index)
        if len(ids):
            kept = torch.from_numpy(delivered)
            trained = self._train(active, kept, round_index)
            for name, tensor in trained.items():
                self.params[name][active[kept]] = tensor[kept]
            for name in self.workload.private:  # private rows never travel: a lost upload does not undo them
                self.params[name][active] = trained[name]
            if late.any() and self.workload.network.late == "stale":
                self._keep_stale(
                    active[torch.from_numpy(late)], {k: v[torch.from_numpy(late)] for k, v in trained.items()}
                )
        if self.timing.cap < self.tree.depth and self._frozen is None:
            self._frozen = self.root_model()
        if top == 0:
            if len(ids):
                self._held_layer = 0  # local epochs only: every device holds what it trained
            return cost
        heard = bool(delivered.any()) or self._stale is not None  # the root steps only on fresh updates
        levels = self._aggregate(active[torch.from_numpy(delivered)], top, stale=True)
        if top == self.tree.depth and self._server_opt is not None and self._opt_state is not None and heard:
            self._opt_state = server_step(self._server_opt, self._opt_state, levels[-1])
            levels[-1] = self._opt_state.model
        pushed = broadcast(levels[top - 1], self.ancestors[top - 1])  # gathers: fresh tensors
        if len(self.public) and self._public_merge == "mean" and top < self.tree.depth:
            # each public node hears all K heads and keeps the plain mean of what they push down
            # (after a root aggregation they all push the same model)
            per_cluster = broadcast(levels[top - 1], self._cluster_ancestors[top - 1])
            for name, tensor in pushed.items():
                tensor[self.public] = per_cluster[name].mean(0)
        # private parameters (a recommender's user embeddings) are never aggregated nor pushed down
        self.params = pushed | {name: self.params[name] for name in self.workload.private}
        self._held_layer = top
        events = {"root_aggregations": 1.0} if top == self.tree.depth else {}
        return RoundCost(cost.duration_s, cost.bytes_sent, cost.messages, events, clocked=True)

    def evaluation_models(self) -> ParamStack:
        """The distinct models the devices hold (see the module docstring)."""
        return self._held()[0]

    def holders(self) -> torch.Tensor:
        groups = self._held()[1]
        return torch.bincount(groups, minlength=int(groups.max()) + 1)

    def device_models(self) -> DeviceModels:
        """Every device with the shared model it holds and its own private rows."""
        if self.sparse is not None:
            return self.sparse.device_models(self._held_layer)
        shared, groups = self._held()
        private = {name: self.params[name] for name in self.workload.private}
        return DeviceModels(shared, groups, private, torch.arange(self.workload.devices))

    def evaluate(self, workload: Workload) -> dict[str, float]:
        """What devices hold (``Protocol.evaluate``), and ``root_accuracy`` (for a recommender
        ``root_hr@10``, ...): the model the root would hold if it aggregated now, which is what the
        devices hold right after a root aggregation. Never a "to target" metric. Not reported where it
        cannot differ from ``accuracy`` (a root that aggregates every round: FedAvg) or means nothing
        (a root that never aggregates: grouped)."""
        metrics = super().evaluate(workload)
        if not self._top_aggregates or self.period[-1] == 1:
            return metrics
        root = self.root_model()
        if workload.recommender:
            assert isinstance(workload.data, InteractionFleet)
            devices = torch.arange(workload.devices)
            private = self.sparse.private if self.sparse is not None else {n: self.params[n] for n in workload.private}
            every = DeviceModels(root, torch.zeros(len(devices), dtype=torch.int64), private, devices)
            scores = evaluate_devices(workload.model, every, workload.data)
            return metrics | {f"root_{name}": value for name, value in scores.items()}
        if self._held_layer == self.tree.depth and self._frozen is None:
            metrics["root_accuracy"] = metrics["accuracy"]  # every device holds the root's model
        else:
            accuracy, _ = evaluate_models(workload.model, root, workload.x_test, workload.y_test)
            metrics["root_accuracy"] = float(accuracy[0])
        return metrics

    def root_model(self) -> ParamStack:
        """The model the root would hold if it aggregated every device's model now, as a stack of one
        (once the root is lost for good: the model it last held). With a server optimizer, its step
        applied (not taken); right after a root aggregation, the model the root pushed down."""
        if self._frozen is not None:
            return self._frozen
        if self._opt_state is not None and self._held_layer == self.tree.depth:
            return self._opt_state.model
        if self.sparse is not None:
            aggregate = self.sparse.root_model()
        else:
            aggregate = self._aggregate(torch.arange(self.workload.devices), self.tree.depth)[-1]
        if self._server_opt is None or self._opt_state is None:
            return aggregate
        return server_step(self._server_opt, self._opt_state, aggregate).model

    def structure(self) -> dict[str, Any]:
        return self._description if self._description is not None else self.tree.to_dict()

    def resolve_node(self, node: str | int) -> int | None:
        """``server``/``root``: the tree's current root; ``head``: the live layer-1 head, not the root,
        of the largest cluster (ties: smallest id; None if there is none); an int: that node."""
        tree = self.timing.tree
        if node in ("server", "root"):
            return tree.root
        if node == "head":
            sizes = np.bincount(tree.parents[0], minlength=len(tree.heads[0]))
            heads = [(-int(n), int(h)) for h, n in zip(tree.heads[0], sizes, strict=True)]
            heads = sorted(c for c in heads if c[1] != tree.root and self.clock.alive(c[1]))
            return heads[0][1] if heads else None
        return node if isinstance(node, int) else None

    def link_loads(self) -> LinkLoad:
        return self.ledger.loads()

    # -- checkpoints -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        stale = None if self._stale is None else {"devices": self._stale[0], "params": self._stale[1]}
        return {
            "tree": tree_state(self.tree),
            "timing": timing_state(self.timing),
            "params": self.params,
            "held_layer": self._held_layer,
            "stale": stale,
            "frozen": self._frozen,
            "ledger": ledger_state(self.ledger),
            "description": self._description,
            "server_opt": None if self._opt_state is None else opt_state_dict(self._opt_state),
            "rows": None if self.sparse is None else self.sparse.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        workload = self.workload
        self.network = NetworkModel(workload.graph)
        self._attach(tree_from_state(state["tree"], workload.graph.number_of_nodes(), workload.devices))
        load_timing_state(self.timing, state["timing"])
        load_ledger_state(self.ledger, state["ledger"])
        if (state.get("rows") is None) != (self.sparse is None):
            raise CheckpointError("rows: sparse item rows saved for a dense run, or missing for a sparse one")
        if self.sparse is not None:
            self.params = {}
            self.sparse.load_state_dict(state["rows"])
        else:
            self.params = stack_like(state["params"], workload.initial, "params", rows=workload.devices)
        self._held_layer = expect(state["held_layer"], int, "held_layer")
        if not 0 <= self._held_layer <= self.tree.depth:
            raise CheckpointError(f"held_layer: got {self._held_layer}, the tree has {self.tree.depth} layer(s)")
        self._stale = None
        if state["stale"] is not None:
            stale = expect(state["stale"], dict, "stale")
            held = expect_tensor(stale["devices"], "stale.devices", torch.int64, (None,))
            devices = torch.from_numpy(expect_ids(held.numpy(), "stale.devices", workload.devices))
            self._stale = (devices, stack_like(stale["params"], workload.initial, "stale.params", rows=len(devices)))
        shared = workload.shared(workload.initial)
        self._frozen = None if state["frozen"] is None else stack_like(state["frozen"], shared, "frozen", rows=1)
        description = state["description"]
        if (description is None) != (self._describe is None):
            raise CheckpointError("description: saved for a protocol without one, or missing for one with one")
        self._description = None if description is None else expect(description, dict, "description")
        saved_opt = state.get("server_opt")
        if (saved_opt is None) != (self._server_opt is None):
            raise CheckpointError("server_opt: saved for a protocol without a server optimizer, or missing for one")
        self._opt_state = None
        if self._server_opt is not None:
            self._opt_state = opt_state_from_dict(saved_opt, self._server_opt, shared, "server_opt")

    # -- numerics ----------------------------------------------------------
    def _rows_round(
        self, cost: RoundCost, active: torch.Tensor, delivered: np.ndarray, late: np.ndarray, top: int, round_index: int
    ) -> RoundCost:
        """``run_round``'s numerics with a recommender's sparse item rows (``etree.trees.sparse_rows``)."""
        rows = self.sparse
        assert rows is not None
        sent = rows.train(active, round_index) if len(active) else None
        keep_late = sent is not None and bool(late.any()) and self.workload.network.late == "stale"
        if self.timing.cap < self.tree.depth and self._frozen is None:
            self._frozen = self.root_model()
        if top == 0:
            if sent is not None:
                rows.hold_own(sent)
                self._held_layer = 0  # local epochs only: every device holds what it trained
            return cost
        heard = bool(delivered.any()) or rows.stale is not None  # the root steps only on fresh updates
        fresh = None if sent is None else sent.take(torch.from_numpy(np.flatnonzero(delivered)))
        levels = rows.aggregate(fresh, top, stale=True)  # with the late uploads of earlier rounds
        if keep_late and sent is not None:  # this round's late uploads wait for the next aggregation
            rows.keep_stale(sent.take(torch.from_numpy(np.flatnonzero(late))))
        if top == self.tree.depth and self._server_opt is not None and self._opt_state is not None and heard:
            self._opt_state = server_step(self._server_opt, self._opt_state, levels[-1][0])
            levels[-1] = (self._opt_state.model, levels[-1][1])
        rows.push(levels, top)
        self._held_layer = top
        events = {"root_aggregations": 1.0} if top == self.tree.depth else {}
        return RoundCost(cost.duration_s, cost.bytes_sent, cost.messages, events, clocked=True)

    def _train(self, active: torch.Tensor, delivered: torch.Tensor, round_index: int) -> ParamStack:
        """What the ``active`` devices upload after local training from the models they hold
        (``delivered``: which uploads the layer-1 heads will use; plain local training ignores it,
        SCAFFOLD's and FedNova's server steps need it)."""
        config = None if self._local == "sgd" else dataclasses.replace(self.workload.train, prox_mu=self._mu)
        return self.workload.train_devices(select(self.params, active), active, round_index, config=config)

    def _setup_public(self) -> None:
        """Rows a public node adds to the layer-1 segment mean: one per cluster other than its home."""
        tree = self.tree
        clusters = len(tree.heads[0])
        self.public = torch.from_numpy(np.asarray(tree.public, dtype=np.int64))
        home = tree.parents[0][tree.public]
        device = np.repeat(tree.public, clusters)
        segment = np.tile(np.arange(clusters), len(tree.public))
        other = segment != np.repeat(home, clusters)
        self._extra_device = torch.from_numpy(device[other])
        self._extra_segment = torch.from_numpy(segment[other])
        # per layer l >= 1: the index of each layer-1 cluster's layer-l ancestor
        self._cluster_ancestors: list[torch.Tensor] = []
        index = np.arange(clusters)
        for level in range(tree.depth):
            if level > 0:
                index = tree.parents[level][index]
            self._cluster_ancestors.append(torch.from_numpy(index))

    def _member_rows(self, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Device row and layer-1 cluster of every aggregated model: each active device once,
        then each active public node once more per cluster other than its home."""
        clusters = self.ancestors[0][active]
        if not len(self.public):
            return active, clusters
        present = torch.isin(self._extra_device, active)
        return torch.cat([active, self._extra_device[present]]), torch.cat([clusters, self._extra_segment[present]])

    def _participants(self, round_index: int) -> torch.Tensor:
        idle = None
        if not self._aggregators_train:  # the tree's aggregator devices sit out (FedAvg's server)
            heads = np.unique(np.concatenate(self.tree.heads))
            idle = heads[heads < self.workload.devices]
        chosen = participants(self.workload.seed, round_index, self.workload.devices, self._participation, idle)
        return torch.from_numpy(chosen)

    def _held(self) -> tuple[ParamStack, torch.Tensor]:
        """The distinct shared models the devices hold and, per device, its row among them.

        Read off the model stack: after a push from layer l every member of a layer-l cluster
        holds the same model (public nodes, with ``public_merge="mean"`` below the root, one more),
        so one member's row stands for the group; after local epochs only, each device's own."""
        if self.sparse is not None:  # after local epochs only: the models the devices start from
            return self.sparse.held(self._held_layer)
        shared = self.workload.shared(self.params)
        devices = self.workload.devices
        if self._held_layer == 0:
            return shared, torch.arange(devices)
        groups = self.ancestors[self._held_layer - 1].clone()
        count = len(self.tree.heads[self._held_layer - 1])
        if len(self.public) and self._public_merge == "mean" and self._held_layer < self.tree.depth:
            groups[self.public] = count
            count += 1
        first = torch.full((count,), devices, dtype=torch.int64)  # every group has a member (AggregationTree)
        first.scatter_reduce_(0, groups, torch.arange(devices), reduce="amin")
        return select(shared, first), groups

    def _top_layer(self, round_index: int) -> int:
        """Highest layer that aggregates this round (0: none)."""
        layers = int(np.sum(round_index % self.period == 0))
        if not self._top_aggregates:
            layers = min(layers, self.tree.depth - 1)
        return layers

    def _keep_stale(self, devices: torch.Tensor, models: ParamStack) -> None:
        """Hold late updates for the next aggregation (a device's newer late update replaces its older one)."""
        if self._stale is not None:
            old, held = self._stale
            keep = ~torch.isin(old, devices)
            devices = torch.cat([old[keep], devices])
            models = {k: torch.cat([held[k][keep], v]) for k, v in models.items()}
        self._stale = (devices, models)

    def _aggregate(self, active: torch.Tensor, top: int, *, stale: bool = False) -> list[ParamStack]:
        """Models of layers 1..top aggregated from the active devices; silent clusters keep theirs.
        With ``stale``, held late updates join their home cluster's average (and are used up)."""
        rows, clusters = self._member_rows(active)
        members = {k: v[rows] for k, v in self.workload.shared(self.params).items()}
        weights = None if self.weights is None else self.weights[rows]
        if stale and self._stale is not None:
            late, held = self._stale
            self._stale = None
            members = {k: torch.cat([v, held[k]]) for k, v in members.items()}
            clusters = torch.cat([clusters, self.ancestors[0][late]])
            rows = torch.cat([rows, late])
            weights = None if self.weights is None else self.weights[rows]
        count = len(self.tree.heads[0])
        current = segment_mean(members, clusters, count, weights)
        heard = torch.zeros(count, dtype=torch.bool)
        heard[clusters] = True
        if not bool(heard.all()):  # a cluster with no participant keeps the model its devices hold
            held = broadcast(self.params, self._first_member(0))
            current = {k: torch.where(heard.view(-1, *[1] * (v.dim() - 1)), v, held[k]) for k, v in current.items()}
        levels = [current]
        sizes = torch.zeros(count).index_add_(0, clusters, weights if weights is not None else torch.ones(len(rows)))
        for level in range(1, top):
            parent = torch.from_numpy(self.tree.parents[level])
            above = len(self.tree.heads[level])
            current = segment_mean(current, parent, above, sizes if self._weighted else None)
            sizes = torch.zeros(above).index_add_(0, parent, sizes)
            levels.append(current)
        return levels

    def _first_member(self, level: int) -> torch.Tensor:
        """One device of each layer-(level+1) cluster, to read the model the cluster holds."""
        ancestors = self.ancestors[level].numpy()
        first = np.full(len(self.tree.heads[level]), -1)
        order = np.arange(len(ancestors))[::-1]
        first[ancestors[order]] = order
        return torch.from_numpy(first)

    # -- timing ------------------------------------------------------------
    def _compute_time(self, active: torch.Tensor) -> float:
        ids = active.numpy()
        return float(self.network.compute_s(ids, self.workload.epoch_flops[ids]).max(initial=0.0))


# -- checkpoint pieces (shared with the Flower adapter) ------------------------
def tree_state(tree: AggregationTree) -> dict[str, Any]:
    """An aggregation tree as state: its head, parent and public-node arrays."""
    return {"heads": list(tree.heads), "parents": list(tree.parents), "public": tree.public}


def tree_from_state(state: Any, nodes: int, devices: int) -> AggregationTree:
    """The tree ``tree_state`` saved, on a graph of ``nodes`` nodes whose first ``devices`` are devices."""
    state = expect(state, dict, "tree")
    heads = [
        expect_ids(h, f"tree.heads[{layer}]", nodes)
        for layer, h in enumerate(expect(state["heads"], list, "tree.heads"))
    ]
    parents = expect(state["parents"], list, "tree.parents")
    if len(parents) != len(heads) or not heads:
        raise CheckpointError(f"tree: {len(heads)} layer(s) of heads, {len(parents)} of parents")
    tree = AggregationTree(
        heads=tuple(heads),
        parents=tuple(expect_ids(p, f"tree.parents[{layer}]", len(heads[layer])) for layer, p in enumerate(parents)),
        public=expect_ids(state["public"], "tree.public", devices),
    )
    if tree.devices != devices:
        raise CheckpointError(f"tree.parents[0]: places {tree.devices} devices, the workload has {devices}")
    return tree


def timing_state(timing: TreeTiming) -> dict[str, Any]:
    """What a ``TreeTiming`` learns over the rounds besides its tree: lost clusters, the highest live layer."""
    return {"lost": [sorted(int(k) for k in lost) for lost in timing.lost], "cap": int(timing.cap)}


def load_timing_state(timing: TreeTiming, state: Any) -> None:
    """Put ``timing_state``'s state into a ``TreeTiming`` made on the saved tree."""
    state = expect(state, dict, "timing")
    lost = expect(state["lost"], list, "timing.lost")
    depth = timing.tree.depth
    if len(lost) != depth:
        raise CheckpointError(f"timing.lost: got {len(lost)} layer(s), the tree has {depth}")
    timing.lost = []
    for layer, clusters in enumerate(lost):
        where = f"timing.lost[{layer}]"
        ids = {expect(k, int, where) for k in expect(clusters, list, where)}
        if any(not 0 <= k < len(timing.tree.heads[layer]) for k in ids):
            raise CheckpointError(f"{where}: names a cluster the tree does not have")
        timing.lost.append(ids)
    cap = expect(state["cap"], int, "timing.cap")
    if not 0 <= cap <= depth:
        raise CheckpointError(f"timing.cap: got {cap}, the tree has {depth} layer(s)")
    timing.cap = cap


def ledger_state(ledger: LinkLedger) -> dict[str, Any]:
    """A ``LinkLedger``'s message counts and bytes, sparse: its sources, how many targets each has, then
    the targets and their counts and bytes, source after source."""
    counts, sent = ledger._counts, ledger._bytes  # the ledger's only state; etree.network.links keeps it
    sources = sorted(counts)
    targets = [np.flatnonzero(counts[source]) for source in sources]
    return {
        "sources": np.array(sources, dtype=np.int64),
        "lengths": np.array([len(t) for t in targets], dtype=np.int64),
        "targets": np.concatenate([np.zeros(0, dtype=np.int64), *targets]),
        "counts": np.concatenate(
            [np.zeros(0, dtype=np.int64), *(counts[s][t] for s, t in zip(sources, targets, strict=True))]
        ),
        "bytes": np.concatenate(
            [np.zeros(0, dtype=np.float64), *(sent[s][t] for s, t in zip(sources, targets, strict=True))]
        ),
    }


def load_ledger_state(ledger: LinkLedger, state: Any) -> None:
    """Put ``ledger_state``'s counts into a fresh ``LinkLedger``."""
    state = expect(state, dict, "ledger")
    nodes = ledger.network.nodes
    sources = expect_ids(state["sources"], "ledger.sources", nodes)
    lengths = expect_array(state["lengths"], "ledger.lengths", np.int64, (len(sources),))
    targets = expect_ids(state["targets"], "ledger.targets", nodes)
    counts = expect_array(state["counts"], "ledger.counts", np.int64, (len(targets),))
    sent = expect_array(state["bytes"], "ledger.bytes", np.float64, (len(targets),))
    if len(np.unique(sources)) != len(sources) or (lengths < 0).any() or lengths.sum() != len(targets):
        raise CheckpointError("ledger: needs distinct sources and one length per source, summing to the targets")
    rows: dict[int, np.ndarray] = {}
    sizes: dict[int, np.ndarray] = {}
    for source, end, length in zip(sources.tolist(), np.cumsum(lengths).tolist(), lengths.tolist(), strict=True):
        rows[source] = np.zeros(nodes, dtype=np.int64)
        rows[source][targets[end - length : end]] = counts[end - length : end]
        sizes[source] = np.zeros(nodes, dtype=np.float64)
        sizes[source][targets[end - length : end]] = sent[end - length : end]
    ledger._counts, ledger._bytes = rows, sizes
