"""KMA clustering ("K-Means and Average accuracy"): E-Tree paper, Algorithm 1.

Devices are grouped by network delay, but a device joins a nearby cluster
only while that cluster's mean pre-trained accuracy stays within ``delta`` of
the global mean; the mean accuracy stands in for "the cluster's label mix
looks like the global mix". Details follow the authors' Java code
(``TopoUtil.getGraphPartitionByDistanceAndDataDistribution``, branch ``lu``):
every iteration clears the clusters and seeds each with its centre; devices are
visited in id order, centres skipped; each tries its ``K // 2`` nearest centres
in delay order and joins the first whose incrementally updated mean stays
within ``delta``, else its nearest centre; centres then move to the
delay-medoid of their cluster (Eq. 1); stop when the centres are stable or
after ``max_iterations`` (100 in the authors' config).

Also here: plain delay k-medoids (the authors' clustering mode 0, the paper's
"K-Means" baseline and the rule for the tree's upper layers) and the
pre-training that produces the accuracies.

Scale: only the K centres' single-source delay rows are computed per iteration
(never an N x N matrix). Each medoid is found by triangle-inequality
pruning on a ball around the old centre (:func:`etree.network.placement.medoid`; exact unless
the set is too large for an exhaustive search, then from a sampled estimate, whose rows the
oracle's ``RowCache`` keeps across iterations), with
the rows of the ``NEIGHBOUR_LANDMARKS`` nearest other centres, already computed for the
assignment, as its landmarks (they surround the cluster, so they bound it from every side).
A member set met before keeps its medoid, and a cycle of centre sets is
detected and read off rather than iterated.
On 10,000 random-geometric devices with K = 100 the whole tree takes seconds
(``benchmarks/bench_tree_build.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import networkx as nx
import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph

from clients.classification.evaluation import evaluate_models
from clients.classification.training import dense_layers
from clients.params import ParamStack, replicate
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.metrics import public_hit_rate
from clients.train_config import TrainConfig
from etree.core.errors import ProtocolError
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.network.placement import RowCache, medoid
from topologies import latency_csgraph

NEIGHBOUR_LANDMARKS = 6  # a cluster's medoid search bounds with the rows of its nearest other centres

ASSIGN_REACH = 2.0  # centre rows are cut off at this many times the largest nearest-centre delay

#: ``assign(delays [k, n], centre positions [k], column) -> (labels [n], accepted [n])``; ``delays`` exact
#: up to a cut-off (inf beyond), ``column(i)`` node i's exact delays from every centre
Assignment = Callable[[np.ndarray, np.ndarray, Callable[[int], np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Clustering:
    """A partition of ``nodes`` (graph ids) into ``len(centres)`` clusters.

    ``labels[i]`` is the cluster of ``nodes[i]``; ``centres[k]`` is cluster k's
    delay-medoid (Eq. 1), always one of its members. ``accepted[i]`` says the
    KMA accuracy rule placed node i (False: it fell back to its nearest centre,
    or the clustering ignores accuracy).
    """

    nodes: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    iterations: int
    converged: bool
    accepted: np.ndarray

    def members(self, cluster: int) -> np.ndarray:
        """Graph ids of the members of ``cluster`` (sorted)."""
        return self.nodes[self.labels == cluster]


class DelayOracle:
    """Shortest-path delays on one graph, computed on demand and never as an N x N matrix."""

    def __init__(self, graph: nx.Graph) -> None:
        self.latency: sparse.csr_array = latency_csgraph(graph)
        self.nodes = graph.number_of_nodes()
        self.positions = np.array([graph.nodes[n]["pos"] for n in range(self.nodes)], dtype=np.float64)
        self._rows: dict[int, tuple[float, np.ndarray]] = {}  # the current centres': (cut-off, row)
        self.cache = RowCache(self.latency)  # the medoid searches' rows, kept across iterations

    def rows(self, sources: np.ndarray, limit: float = np.inf) -> np.ndarray:
        """Delay rows ``[len(sources), n]``, exact up to ``limit`` (inf beyond); rows of sources not asked
        for last time are dropped. A new centre was a scored member of its cluster, so a medoid search
        often holds its row."""
        keep = {int(s) for s in sources}
        self._rows = {s: entry for s, entry in self._rows.items() if s in keep and entry[0] >= limit}
        for source in keep - self._rows.keys():
            row = self.cache.get(source, limit)
            if row is not None:
                self._rows[source] = (limit, row)
        missing = sorted(keep - self._rows.keys())
        if missing:
            dist = csgraph.dijkstra(self.latency, directed=True, indices=missing, limit=limit)
            for row, source in zip(np.atleast_2d(dist), missing, strict=True):
                self._rows[source] = (limit, row)
        if not len(sources):
            return np.empty((0, self.nodes))
        out = np.stack([self._rows[int(s)][1] for s in sources])
        if np.isfinite(limit):  # rows held with a longer cut-off: the same cut-off for all (the assignment's rule)
            out[out > limit] = np.inf
        return out

    def reach(self, centres: np.ndarray, nodes: np.ndarray) -> float:
        """The largest delay from any of ``nodes`` to its nearest of ``centres`` (one multi-source Dijkstra)."""
        nearest = csgraph.dijkstra(self.latency, directed=True, indices=centres, min_only=True)
        return float(nearest[nodes].max())

    def column(self, node: int, centres: np.ndarray) -> np.ndarray:
        """Exact delays from every one of ``centres`` to ``node`` (delays are symmetric: ``node``'s own row)."""
        return self.cache.rows(np.array([node]))[0][centres]

    def medoid(
        self, members: np.ndarray, centre_row: np.ndarray | None = None, landmark_rows: np.ndarray | None = None
    ) -> int:
        """Eq. 1 (:func:`etree.network.placement.medoid`); ``centre_row``: delays from the old
        centre; ``landmark_rows``: delays from other nodes (the neighbouring centres), to bound with."""
        return medoid(self.latency, members, centre_row, landmark_rows, self.cache)


# -- assignment steps (pure functions) ---------------------------------------
def nearest_assignment(delays: np.ndarray, centre_positions: np.ndarray) -> np.ndarray:
    """k-medoids assignment: each node joins its nearest centre (ties: the lower cluster index).

    ``delays[k, i]``: delay from centre k to node i; ``centre_positions[k]`` is
    the index of centre k among the nodes, which always stays in its own cluster.
    """
    labels = np.argmin(delays, axis=0)
    labels[centre_positions] = np.arange(len(centre_positions))
    return labels


def kma_assignment(
    delays: np.ndarray,
    centre_positions: np.ndarray,
    accuracy: np.ndarray,
    delta: float,
    candidates: int,
    column: Callable[[int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One KMA assignment pass (Algorithm 1, lines 6-16): returns (labels, accepted).

    Clusters start as their centres alone; nodes are visited in index order
    (centres skipped). Node i tries the ``candidates`` nearest centres, nearest
    first, and joins the first whose running mean accuracy, updated
    incrementally as in the authors' code, stays strictly within ``delta`` of
    the global mean; otherwise it joins its nearest centre (``accepted`` False).
    The loop is sequential by nature (each join moves a running mean), so it is
    plain Python over precomputed lists; a node's centres are sorted only when its
    nearest refuses it (rare: at K = 1,000 sorting every node's took most of an iteration).

    ``delays`` may be cut off (inf past a delay every node's nearest centre is within): a refused
    node whose centres within the cut-off are fewer than ``candidates`` and all refuse it takes its
    exact delays from ``column(i)`` (None: ``delays`` are complete) and goes on in that order, so the
    result is the one full rows give. Cut-off rows cost a fraction of full ones on geometric graphs.
    """
    k, n = delays.shape
    candidates = max(1, min(candidates, k))
    nearest = np.argmin(delays, axis=0).tolist()  # the first of a stable sort: ties to the lower index
    acc = accuracy.astype(np.float64).tolist()
    target = float(np.mean(accuracy))
    labels = [-1] * n
    accepted = [False] * n
    means = [acc[int(c)] for c in centre_positions]
    sizes = [1] * k
    for cluster, c in enumerate(centre_positions.tolist()):
        labels[c] = cluster
    for i in range(n):
        if labels[i] >= 0:  # a centre
            continue
        a = acc[i]
        choice = nearest[i]
        mean = (means[choice] * sizes[choice] + a) / (sizes[choice] + 1)
        if abs(mean - target) < delta:
            accepted[i] = True
        elif candidates > 1:  # rare: the nearest centre refused, so sort this node's centres
            for j in _next_centres(delays[:, i], candidates, column, i):
                trial = (means[j] * sizes[j] + a) / (sizes[j] + 1)
                if abs(trial - target) < delta:
                    choice, mean, accepted[i] = j, trial, True
                    break
        means[choice] = mean
        sizes[choice] += 1
        labels[i] = choice
    return np.array(labels, dtype=np.int64), np.array(accepted, dtype=bool)


def _next_centres(
    own: np.ndarray, candidates: int, column: Callable[[int], np.ndarray] | None, node: int
) -> Iterator[int]:
    """After its nearest, the centres a refused node tries, nearest first, ``candidates`` in all; ``own``
    its (maybe cut-off) delays from each centre. Where the cut-off hides some of them, the ones within
    it come first and the rest follow in the order of ``column(node)``, the node's exact delays."""
    order = np.argsort(own, kind="stable")[:candidates]
    short = column is not None and not np.isfinite(own[order[-1]])
    if short:
        order = order[np.isfinite(own[order])]
    yield from order[1:].tolist()
    if short:
        assert column is not None
        tried = set(order.tolist())
        yield from (j for j in np.argsort(column(node), kind="stable")[:candidates].tolist() if j not in tried)


# -- iterated clusterings ----------------------------------------------------
def _node_column(oracle: DelayOracle, nodes: np.ndarray, centres: np.ndarray, position: int) -> np.ndarray:
    """The exact delays from every centre to ``nodes[position]``, for an assignment on cut-off rows."""
    return oracle.column(int(nodes[position]), centres)


def _iterate(
    oracle: DelayOracle,
    nodes: np.ndarray,
    k: int,
    assign: Assignment,
    max_iterations: int,
    rng: np.random.Generator,
) -> Clustering:
    """Shared k-medoids loop: assign, move centres to medoids, until stable or ``max_iterations``.

    An iteration is a deterministic function of the centres, so once a set of
    centres comes back the loop is periodic: the outcome at ``max_iterations``
    is then read off the cycle instead of being recomputed (same result as
    running to the cap, as the authors' code does).
    """
    if not 1 <= k <= len(nodes):
        raise ProtocolError(f"clustering: cannot make {k} clusters of {len(nodes)} nodes")
    if max_iterations < 1:
        raise ProtocolError(f"clustering: max_iterations must be >= 1, got {max_iterations}")
    centre_pos = np.sort(rng.choice(len(nodes), size=k, replace=False))
    seen: dict[bytes, int] = {}  # centres (as bytes) -> the iteration that started from them
    outcomes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per iteration: labels, accepted, new centres
    medoids: dict[bytes, int] = {}  # member set (as bytes) -> its medoid
    for iteration in range(max_iterations):
        state = centre_pos.tobytes()
        if state in seen:  # periodic from here on
            first = seen[state]
            labels, accepted, final = outcomes[first + (max_iterations - 1 - first) % (iteration - first)]
            return Clustering(nodes, labels, nodes[final], max_iterations, False, accepted)
        seen[state] = iteration
        centres = nodes[centre_pos]
        # every node's nearest centre lies within reach; rows cut off at twice that hold its next ones
        limit = ASSIGN_REACH * oracle.reach(centres, nodes) * (1 + 1e-9) if k > 1 else np.inf
        rows = oracle.rows(centres, limit)
        labels, accepted = assign(rows[:, nodes], centre_pos, partial(_node_column, oracle, nodes, centres))
        order = np.argsort(labels, kind="stable")
        groups = np.split(nodes[order], np.cumsum(np.bincount(labels, minlength=k))[:-1])
        new = np.empty(k, dtype=np.int64)
        between = rows[:, nodes[centre_pos]]  # [k, k] delays between the centres
        for c, group in enumerate(groups):  # a member set seen before keeps its medoid
            key = group.tobytes()
            if key not in medoids:
                near = np.argsort(between[c], kind="stable")[1 : NEIGHBOUR_LANDMARKS + 1]
                own = rows[c]
                if not 3 * own[group].max() * (1 + 1e-9) <= limit:  # its ball (3R) reaches past the cut-off
                    own = oracle.cache.rows(centres[c : c + 1])[0]
                medoids[key] = oracle.medoid(group, own, rows[near] if len(near) else None)
            new[c] = medoids[key]
        new_pos = np.searchsorted(nodes, new)
        outcomes.append((labels, accepted, new_pos))
        if np.array_equal(new_pos, centre_pos):
            return Clustering(nodes, labels, nodes[new_pos], iteration + 1, True, accepted)
        centre_pos = new_pos
    labels, accepted, final = outcomes[-1]
    return Clustering(nodes, labels, nodes[final], max_iterations, False, accepted)


def _default_candidates(k: int, candidates: int | None) -> int:
    return max(1, k // 2) if candidates is None else max(1, int(candidates))


def kma_clusters(
    network: NetworkModel,
    accuracy: np.ndarray,
    k: int,
    *,
    delta: float = 0.09,
    max_iterations: int = 100,
    candidates: int | None = None,
    rng: np.random.Generator,
    oracle: DelayOracle | None = None,
) -> Clustering:
    """Algorithm 1 (KMA) over devices ``0..len(accuracy)-1``.

    ``accuracy[i]`` is device i's pre-trained accuracy; ``candidates`` is how
    many nearest centres a device tries (default ``K // 2``, the authors'
    ``checkNearestRatio = 2``); ``delta`` 0.09 is the authors' value. Initial
    centres are ``k`` distinct devices drawn from ``rng``.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    nodes = np.arange(len(accuracy), dtype=np.int64)
    tries = _default_candidates(k, candidates)

    def assign(
        delays: np.ndarray, centre_pos: np.ndarray, column: Callable[[int], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        return kma_assignment(delays, centre_pos, accuracy, delta, tries, column)

    return _iterate(oracle or DelayOracle(network.graph), nodes, k, assign, max_iterations, rng)


def kmedoids_clusters(
    network: NetworkModel,
    k: int,
    *,
    nodes: np.ndarray | None = None,
    max_iterations: int = 100,
    rng: np.random.Generator,
    oracle: DelayOracle | None = None,
) -> Clustering:
    """Delay-only k-medoids of ``nodes`` (default: every graph node), the paper's "K-Means" baseline.

    Alternates nearest-centre assignment and the medoid update (Eq. 1), as the
    authors' clustering mode 0; E-Tree's upper layers cluster heads with it.
    """
    oracle = oracle or DelayOracle(network.graph)
    chosen = np.arange(oracle.nodes, dtype=np.int64) if nodes is None else np.sort(np.asarray(nodes, dtype=np.int64))

    def assign(
        delays: np.ndarray, centre_pos: np.ndarray, column: Callable[[int], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        return nearest_assignment(delays, centre_pos), np.zeros(delays.shape[1], dtype=bool)

    if k == 1:  # one cluster: its head is the medoid of everything, no iteration needed
        labels = np.zeros(len(chosen), dtype=np.int64)
        return Clustering(chosen, labels, np.array([oracle.medoid(chosen)]), 1, True, np.zeros(len(chosen), bool))
    return _iterate(oracle, chosen, k, assign, max_iterations, rng)


# -- pre-training (Algorithm 1, lines 2-3) ------------------------------------
PRETRAIN_ROUND = 0  # the engine numbers rounds from 1, so round 0's sample orders are free for pre-training


def public_set(workload: Workload, samples: int, seed: int, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's public set ``D_tes``: a seeded subset of at most ``samples`` rows of the
    workload's validation split, never of the test set.

    The authors scored on a separate 1000-sample public file (``uciHAR_tes_1000.dat``); the
    validation split (``[data] validation_fraction``) is carved from the training data before
    partitioning, so it is public in the same sense: no device holds it and no reported metric
    is measured on it.
    """
    total = len(workload.y_val)
    if total == 0:
        raise ProtocolError(
            f"protocols.{label}: KMA's pre-training accuracy is measured on a public set drawn from the "
            f"validation split, and this run has none; set data.validation_fraction > 0"
        )
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(samples, total), replace=False))
    index = torch.from_numpy(rows)
    return workload.x_val[index], workload.y_val[index]


def pretrain_accuracy(workload: Workload, epochs: int, public_x: torch.Tensor, public_y: torch.Tensor) -> np.ndarray:
    """Algorithm 1, lines 2-3: every device trains ``epochs`` local epochs from the initial model alone,
    then its model's 0-1 accuracy on the public set is measured. The models are thrown away."""
    config = TrainConfig(workload.train.lr, epochs, workload.train.batch_size)
    devices = torch.arange(workload.devices)
    trained = workload.train_devices(
        replicate(workload.initial, workload.devices), devices, PRETRAIN_ROUND, config=config
    )
    return public_accuracy(workload.model, trained, public_x, public_y)


PUBLIC_CHUNK_FLOATS = 2**24  # activations one chunk of models holds on the public set (64 MB)


@torch.no_grad()
def public_accuracy(model: torch.nn.Module, params: ParamStack, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """0-1 accuracy of every model of the stack on the public set ``(x, y)``.

    Every model sees the same inputs, so for a ReLU MLP (softmax, mlp: ``dense_layers``) the first
    layer of a chunk of models is one ``[n, F] x [F, c * H]`` matrix product, not ``c`` small ones
    (at 100,000 devices: ~1 s instead of ~15 s); the argmax picks the first of equal logits, as
    :func:`evaluate_models` does. Other models go through :func:`evaluate_models`.
    """
    layers = dense_layers(model)
    if layers is None:
        return evaluate_models(model, params, x, y)[0]
    inputs = x.flatten(1)
    count = len(next(iter(params.values())))
    width = max(params[w].shape[1] for w, _ in layers)
    chunk = max(1, PUBLIC_CHUNK_FLOATS // max(1, len(inputs) * width))
    accuracy = np.empty(count)
    (w, b), rest = layers[0], layers[1:]
    for start in range(0, count, chunk):
        weight, bias = params[w][start : start + chunk], params[b][start : start + chunk]  # [c, H, F], [c, H]
        c, hidden = weight.shape[:2]
        h = torch.addmm(bias.reshape(1, -1), inputs, weight.reshape(c * hidden, -1).T)
        h = h.view(len(inputs), c, hidden)  # [n, c, H]: the argmax runs over the contiguous last axis
        if rest:
            h = h.transpose(0, 1)  # [c, n, H]
            for w_rest, b_rest in rest:
                layer_bias, layer = params[b_rest][start : start + c].unsqueeze(1), params[w_rest][start : start + c]
                h = torch.baddbmm(layer_bias, torch.relu(h), layer.transpose(1, 2))
            h = h.transpose(0, 1).contiguous()
        accuracy[start : start + c] = (h.argmax(-1) == y.unsqueeze(1)).float().mean(0).numpy()
    return accuracy


def pretrain_hit_rate(workload: Workload, epochs: int, samples: int, seed: int) -> np.ndarray:
    """Algorithm 1's pre-trained score for a recommender: each device trains ``epochs`` local epochs
    alone, then its shared parameters score HR@10 on public users (``public_hit_rate``).

    GUESS: the public users are a seeded sample of at most ``samples`` of the fleet's users (their
    training histories and held-out items); a device's private rows are never used, the public user
    is folded in from item rows. Unlike the classifiers' public set (the validation split), the
    held-out items are the users' test items: interaction data has only its leave-last-out split.
    """
    data = workload.data
    if not isinstance(data, InteractionFleet):
        raise ProtocolError("pretrain_hit_rate: needs interaction data (a recommender workload)")
    slots = torch.nonzero(data.user_valid)  # [users, 2]: (device, slot)
    rows = np.sort(np.random.default_rng(seed).choice(len(slots), size=min(samples, len(slots)), replace=False))
    config = TrainConfig(workload.train.lr, epochs, workload.train.batch_size)
    trained = workload.train_devices(
        replicate(workload.initial, workload.devices), torch.arange(workload.devices), PRETRAIN_ROUND, config=config
    )
    return public_hit_rate(workload.model, workload.shared(trained), data, slots[torch.from_numpy(rows)])
