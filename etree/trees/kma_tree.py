"""The E-Tree aggregation tree: KMA (or k-medoids) clustering layer by layer, public nodes, and its description.

Shared by the ``etree`` and ``grouped`` protocols (:mod:`etree.protocols.etree_learning`,
:mod:`etree.protocols.ablations`), which never import each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from clients.classification.fleet import FleetData
from etree.core.errors import ProtocolError
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.hierarchical import LocalObjective, TreeProtocol
from etree.trees.kma import (
    Clustering,
    DelayOracle,
    kma_clusters,
    kmedoids_clusters,
    pretrain_accuracy,
    pretrain_hit_rate,
    public_set,
)
from etree.trees.public_nodes import select_public_nodes
from etree.trees.server_opt import ServerOptimizer
from etree.trees.tree import AggregationTree

STREAM_TAG = 0xE7EE  # mixed with the workload seed: E-Tree's own streams, shared by etree and grouped


CLUSTERINGS = ("kma", "kmedoids")


# -- options ---------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_groups(label: str, groups: Any) -> tuple[int, ...]:
    """Cluster counts per layer: positive integers, non-increasing, the last one 1 (the root)."""
    field = f"protocols.{label}.groups"
    if isinstance(groups, str | bytes) or not isinstance(groups, Sequence) or not groups:
        raise ProtocolError(f"{field}: got {groups!r}; give a non-empty list of cluster counts, e.g. [8, 1]")
    if not all(_is_int(g) and g >= 1 for g in groups):
        raise ProtocolError(f"{field}: got {list(groups)}; every entry must be a positive integer")
    if any(b > a for a, b in itertools.pairwise(groups)):
        raise ProtocolError(f"{field}: got {list(groups)}; counts must not increase from one layer to the next")
    if groups[-1] != 1:
        raise ProtocolError(f"{field}: got {list(groups)}; the last layer must be 1 cluster (the root)")
    return tuple(int(g) for g in groups)


def check_ratios(label: str, ratios: Any, depth: int) -> tuple[int, ...]:
    """One aggregation ratio per layer, each >= 1."""
    field = f"protocols.{label}.ratios"
    if isinstance(ratios, str | bytes) or not isinstance(ratios, Sequence):
        raise ProtocolError(f"{field}: got {ratios!r}; give a list of one integer per layer")
    if len(ratios) != depth or not all(_is_int(r) and r >= 1 for r in ratios):
        raise ProtocolError(f"{field}: got {list(ratios)}; give {depth} integer(s) >= 1, one per layer of groups")
    return tuple(int(r) for r in ratios)


@dataclass(frozen=True)
class TreeOptions:
    """How the E-Tree structure is built; shared by ``etree`` and ``grouped``."""

    groups: tuple[int, ...] = (8, 1)
    clustering: str = "kma"
    delta: float = 0.09  # authors' clustering.delta
    pretrain_epochs: int = 10  # authors' pretrainRounds
    public_samples: int = 1000  # size of the authors' public file (drawn from the validation split)
    max_iterations: int = 100  # authors' clustering.iterations
    public_nodes: bool = False
    gamma: float = 0.05  # GUESS: the paper gives no value

    @classmethod
    def checked(cls, label: str, **options: Any) -> TreeOptions:
        """Validate every option, naming ``protocols.<label>.<option>`` on a bad value."""

        def fail(name: str, rule: str) -> ProtocolError:
            return ProtocolError(f"protocols.{label}.{name}: got {options[name]!r}; {rule}")

        groups = check_groups(label, options["groups"])
        if options["clustering"] not in CLUSTERINGS:
            raise fail("clustering", f"choose one of: {', '.join(CLUSTERINGS)}")
        if not _is_real(options["delta"]) or not options["delta"] > 0:
            raise fail("delta", "must be a number > 0")
        for name in ("pretrain_epochs", "public_samples", "max_iterations"):
            if not _is_int(options[name]) or options[name] < 1:
                raise fail(name, "must be an integer >= 1")
        if not isinstance(options["public_nodes"], bool):
            raise fail("public_nodes", "must be true or false")
        if not _is_real(options["gamma"]) or not 0 < options["gamma"] <= 1:
            raise fail("gamma", "must be a number in (0, 1]")
        return cls(
            groups,
            options["clustering"],
            float(options["delta"]),
            int(options["pretrain_epochs"]),
            int(options["public_samples"]),
            int(options["max_iterations"]),
            options["public_nodes"],
            float(options["gamma"]),
        )

    @property
    def needs_accuracy(self) -> bool:
        return self.clustering == "kma" or self.public_nodes


# -- the tree --------------------------------------------------------------
@dataclass(frozen=True)
class ETreeBuild:
    """The tree and how it came about: one clustering per layer, the accuracies KMA used."""

    tree: AggregationTree
    layers: tuple[Clustering, ...]
    accuracy: np.ndarray | None
    method: str
    delta: float


def build_etree_tree(
    network: NetworkModel,
    devices: int,
    groups: Sequence[int],
    *,
    accuracy: np.ndarray | None = None,
    clustering: str = "kma",
    delta: float = 0.09,
    max_iterations: int = 100,
    candidates: int | None = None,
    public_nodes: bool = False,
    gamma: float = 0.05,
    rng: np.random.Generator,
) -> ETreeBuild:
    """Build the E-Tree bottom-up (``ETreeLogicalTopology.wire``): KMA or k-medoids over the devices,
    then delay k-medoids over each layer's heads; public nodes by Algorithm 2 if asked.

    ``accuracy`` (pre-trained accuracy per device) is needed by KMA and by
    public-node selection. Deterministic given ``rng``.
    """
    if not 1 <= groups[0] <= devices:
        raise ProtocolError(f"groups: {groups[0]} clusters of {devices} devices; need 1 <= groups[0] <= devices")
    if (clustering == "kma" or public_nodes) and (accuracy is None or len(accuracy) != devices):
        raise ProtocolError("accuracy: KMA and public-node selection need one pre-trained accuracy per device")
    oracle = DelayOracle(network.graph)
    if clustering == "kma":
        assert accuracy is not None
        first = kma_clusters(
            network,
            accuracy,
            groups[0],
            delta=delta,
            max_iterations=max_iterations,
            candidates=candidates,
            rng=rng,
            oracle=oracle,
        )
    else:
        first = kmedoids_clusters(
            network, groups[0], nodes=np.arange(devices), max_iterations=max_iterations, rng=rng, oracle=oracle
        )
    heads: list[np.ndarray] = [first.centres]
    parents: list[np.ndarray] = [first.labels]
    layers = [first]
    for count in groups[1:]:
        below = heads[-1]
        layer = kmedoids_clusters(network, count, nodes=below, max_iterations=max_iterations, rng=rng, oracle=oracle)
        parents.append(layer.labels[np.searchsorted(layer.nodes, below)])  # index by position in `below`
        heads.append(layer.centres)
        layers.append(layer)
    public = np.zeros(0, dtype=np.int64)
    if public_nodes:
        assert accuracy is not None
        aggregators = np.unique(np.concatenate(heads))
        public = select_public_nodes(
            oracle.rows(first.centres)[:, :devices],
            first.labels,
            accuracy,
            gamma=gamma,
            delta=delta,
            exclude=aggregators[aggregators < devices],
        )
    tree = AggregationTree(heads=tuple(heads), parents=tuple(parents), public=public)
    return ETreeBuild(tree, tuple(layers), accuracy, clustering, delta)


def label_histograms(data: FleetData, tree: AggregationTree, num_classes: int) -> np.ndarray:
    """``[K, C]`` training-label counts per layer-1 cluster; a public node counts in every cluster."""
    y, counts = data.y.numpy(), data.counts.numpy()
    clusters = len(tree.heads[0])
    valid = np.arange(y.shape[1])[None, :] < counts[:, None]
    cluster = np.broadcast_to(tree.parents[0][:, None], y.shape)
    hist = np.bincount((cluster * num_classes + y)[valid], minlength=clusters * num_classes)
    hist = hist.reshape(clusters, num_classes)
    for p in tree.public.tolist():
        own = np.bincount(y[p, : counts[p]], minlength=num_classes)
        hist += own[None, :]
        hist[tree.parents[0][p]] -= own
    return hist


class ETreeBuilder:
    """The ``TreeBuilder`` of ``etree`` and ``grouped``: pre-trains if needed, builds, then describes."""

    def __init__(self, label: str, options: TreeOptions, ratios: Sequence[int] | None = None) -> None:
        self.label = label
        self.options = options
        self.ratios = None if ratios is None else list(ratios)

    def __call__(self, workload: Workload, network: NetworkModel) -> AggregationTree:
        opts = self.options
        if opts.groups[0] > workload.devices:
            raise ProtocolError(
                f"protocols.{self.label}.groups: got {list(opts.groups)}; groups[0] must be at most "
                f"the {workload.devices} devices"
            )
        public_seq, cluster_seq = np.random.SeedSequence([workload.seed, STREAM_TAG]).spawn(2)
        accuracy = None
        if opts.needs_accuracy:
            public_seed = int(public_seq.generate_state(1)[0])
            if workload.recommender:
                accuracy = pretrain_hit_rate(workload, opts.pretrain_epochs, opts.public_samples, public_seed)
            else:
                x, y = public_set(workload, opts.public_samples, public_seed, self.label)
                accuracy = pretrain_accuracy(workload, opts.pretrain_epochs, x, y)
        self.workload, self.network = workload, network
        self.build = build_etree_tree(
            network,
            workload.devices,
            opts.groups,
            accuracy=accuracy,
            clustering=opts.clustering,
            delta=opts.delta,
            max_iterations=opts.max_iterations,
            public_nodes=opts.public_nodes,
            gamma=opts.gamma,
            rng=np.random.default_rng(cluster_seq),
        )
        return self.build.tree

    def describe(self) -> dict[str, Any]:
        """``tree.json``: per layer heads + members, with each cluster's mean member-to-head delay
        (head excluded), and for layer 1 its label histogram and mean pre-train accuracy;
        the public nodes with their home clusters; the clustering statistics."""
        build, tree, net = self.build, self.build.tree, self.network
        out = tree.to_dict()
        data = self.workload.data
        hist = label_histograms(data, tree, self.workload.num_classes) if isinstance(data, FleetData) else None
        cluster_acc = None
        if build.accuracy is not None:
            homes = tree.parents[0]
            clusters = len(tree.heads[0])
            sums = np.bincount(homes, weights=build.accuracy, minlength=clusters)
            sizes = np.bincount(homes, minlength=clusters).astype(np.float64)
            for p in tree.public.tolist():
                others = np.arange(clusters) != homes[p]
                sums += others * build.accuracy[p]
                sizes += others
            cluster_acc = sums / sizes
        for level, layer in enumerate(out["layers"]):
            delays: list[float] = []
            for k, cluster in enumerate(layer["clusters"]):
                others = np.array([m for m in cluster["members"] if m != cluster["head"]], dtype=np.int64)
                row = net.latency_s(cluster["head"], others) if len(others) else np.zeros(0)
                cluster["mean_delay_s"] = float(row.mean()) if len(row) else 0.0
                delays.extend(row.tolist())
                if level == 0:
                    if hist is not None:  # (interaction data has items, not labels)
                        cluster["label_histogram"] = hist[k].tolist()
                    if cluster_acc is not None:
                        cluster["mean_pretrain_accuracy"] = float(cluster_acc[k])
            layer["mean_delay_s"] = float(np.mean(delays)) if delays else 0.0
        out["public_homes"] = {str(p): int(tree.parents[0][p]) for p in tree.public.tolist()}
        first = build.layers[0]
        out["clustering"] = {
            "method": build.method,
            "groups": list(self.options.groups),
            "ratios": self.ratios,
            "iterations": first.iterations,
            "converged": first.converged,
            "upper_iterations": [layer.iterations for layer in build.layers[1:]],
            "delta": build.delta if build.method == "kma" or tree.public.size else None,
            "global_mean_accuracy": None if build.accuracy is None else float(build.accuracy.mean()),
            "accepted_fraction": float(first.accepted.mean()) if build.method == "kma" else None,
            "pretrain_epochs": self.options.pretrain_epochs if build.accuracy is not None else None,
            "public_samples": self.options.public_samples if build.accuracy is not None else None,
            "gamma": self.options.gamma if self.options.public_nodes else None,
        }
        return out


def kma_tree_protocol(
    label: str,
    options: TreeOptions,
    ratios: Sequence[int],
    *,
    weighted: bool,
    participation: float,
    public_merge: str,
    top_aggregates: bool = True,
    local: LocalObjective = "sgd",
    mu: float = 0.01,
    server_opt: ServerOptimizer | None = None,
    item_merge: str = "touched",
) -> TreeProtocol:
    """The round engine over the KMA tree, shared by ``etree`` and ``grouped`` (which differ only in
    whether the top layer aggregates); a crashed head is replaced by the next delay-medoid of its cluster."""
    builder = ETreeBuilder(label, options, ratios)
    return TreeProtocol(
        label,
        builder,
        ratios=ratios,
        weighted=weighted,
        participation=participation,
        top_aggregates=top_aggregates,
        public_merge=public_merge,
        describe=builder.describe,
        failover=True,
        local=local,
        mu=mu,
        server_opt=server_opt,
        item_merge=item_merge,
    )
