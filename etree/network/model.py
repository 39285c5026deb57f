"""What moving a model between two nodes, or training on a device, costs in simulated seconds.

Delay of a message = latency of the latency-shortest path + bits / the
bottleneck bandwidth on that path; compute time = FLOPs / the node's
``compute_flops``. Rows are computed per source node with single-source
Dijkstra (``topologies.delays_from``), never as an N x N matrix, and cached.

For link contention and per-link accounting a source's shortest-path tree
(Dijkstra predecessors) is kept too: ``first_links`` names the link next to
the source on each path (the link into an aggregator that its uploads
share), ``path_link_counts`` spreads message counts over every link of the
paths. Links are numbered in ``graph.edges`` order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx
import numpy as np
from scipy import sparse

from topologies import link_csgraphs, shortest_path_costs

PREPARE_BATCH = 64  # sources per Dijkstra batch: bounds the [batch, n] arrays of the bottleneck search


class NetworkModel:
    """Transfer and compute times on one topology graph."""

    def __init__(self, graph: nx.Graph) -> None:
        self.graph = graph
        self.nodes = graph.number_of_nodes()
        self.compute_flops = np.array([graph.nodes[n]["compute_flops"] for n in range(self.nodes)], dtype=np.float64)
        self._latency: dict[int, np.ndarray] = {}
        self._bandwidth: dict[int, np.ndarray] = {}
        self._pred: dict[int, np.ndarray] = {}
        self._first: dict[int, np.ndarray] = {}  # per source: every node's first link (``first_links``)
        self._matrices: Any = None  # the latency and bandwidth csgraphs, built on first use
        edges = list(graph.edges(data="bandwidth_bps"))
        self.link_ends = np.array([(u, v) for u, v, _ in edges], dtype=np.int64).reshape(-1, 2)
        self.link_bandwidth = np.array([bw for _, _, bw in edges], dtype=np.float64)
        m = len(edges)
        codes = np.concatenate(
            [
                self.link_ends[:, 0] * self.nodes + self.link_ends[:, 1],
                self.link_ends[:, 1] * self.nodes + self.link_ends[:, 0],
            ]
        )
        order = np.argsort(codes, kind="stable")
        self._codes = codes[order]
        self._code_link = np.concatenate([np.arange(m), np.arange(m)])[order]

    def prepare(self, sources: Iterable[int]) -> None:
        """Compute the rows of ``sources``, ``PREPARE_BATCH`` at a time: one Dijkstra per source gives its
        latencies, bottleneck bandwidths and shortest-path tree (``predecessors``) alike."""
        missing = sorted({int(s) for s in sources} - self._latency.keys())
        for start in range(0, len(missing), PREPARE_BATCH):
            chunk = missing[start : start + PREPARE_BATCH]
            latency, bandwidth, pred = shortest_path_costs(*self.csgraphs, np.array(chunk, dtype=np.int64))
            for row, source in enumerate(chunk):
                self._latency[source] = latency[row]
                self._bandwidth[source] = bandwidth[row]
                self._pred.setdefault(source, pred[row])

    @property
    def csgraphs(self) -> tuple[sparse.csr_array, sparse.csr_array]:
        """The latency and bandwidth csgraphs (:func:`topologies.link_csgraphs`), built once."""
        if self._matrices is None:
            self._matrices = link_csgraphs(self.graph)
        return self._matrices

    def latency_s(self, source: int, targets: np.ndarray) -> np.ndarray:
        """Path latency from ``source`` to each of ``targets`` (the graph is undirected: symmetric)."""
        self.prepare([source])
        return self._latency[int(source)][targets]

    def transfer_s(self, source: int, targets: np.ndarray, nbytes: float | np.ndarray) -> np.ndarray:
        """Seconds for a message of ``nbytes`` (one size, or one per target) between ``source`` and each
        target; 0 to itself."""
        self.prepare([source])
        bandwidth = self._bandwidth[int(source)][targets]
        return self._latency[int(source)][targets] + 8.0 * nbytes / bandwidth

    def compute_s(self, nodes: np.ndarray, flops: np.ndarray) -> np.ndarray:
        """Seconds each node needs for ``flops`` floating-point operations."""
        return flops / self.compute_flops[nodes]

    @property
    def latency_graph(self) -> Any:
        """The link latencies as a symmetric csgraph (:func:`topologies.latency_csgraph`), built once."""
        return self.csgraphs[0]

    # -- paths ---------------------------------------------------------------
    def predecessors(self, source: int) -> np.ndarray:
        """The latency-shortest-path tree of ``source``: each node's predecessor (-9999 at the root)."""
        source = int(source)
        if source not in self._pred:
            self.prepare([source])
        return self._pred[source]

    def link_ids(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Index of the link between ``a[i]`` and ``b[i]`` (either direction)."""
        return self._code_link[np.searchsorted(self._codes, np.asarray(a) * self.nodes + np.asarray(b))]

    def first_links(self, source: int, targets: np.ndarray) -> np.ndarray:
        """The link next to ``source`` on its path to each target; -1 for the source itself.

        Read off a per-source table of every node's first link, made once by pointer doubling up
        the shortest-path tree (rounds under contention ask for it every round)."""
        source = int(source)
        if source not in self._first:
            pred = self.predecessors(source).astype(np.int64)
            nodes = np.arange(self.nodes)
            top = np.where((pred == source) | (pred < 0), nodes, pred)  # the node below the source on each path
            while True:
                above = top[top]
                if np.array_equal(above, top):
                    break
                top = above
            first = np.full(self.nodes, -1, dtype=np.int64)
            reached = pred >= 0
            first[reached] = self.link_ids(np.full(int(reached.sum()), source), top[reached])
            self._first[source] = first
        return self._first[source][np.asarray(targets, dtype=np.int64)]

    def path_link_counts(self, source: int, counts: np.ndarray) -> np.ndarray:
        """Messages per link when ``counts[v]`` messages travel between ``source`` and each node v."""
        pred = self.predecessors(source)
        load = np.zeros(len(self.link_bandwidth))
        here = np.flatnonzero(counts)
        here = here[here != source]
        weight = counts[here].astype(np.float64)
        while len(here):
            back = pred[here]
            np.add.at(load, self.link_ids(back, here), weight)
            keep = back != source
            here, weight = back[keep], weight[keep]
        return load


def fifo_link_arrivals(arrivals: np.ndarray, links: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Arrival times when messages that share a link queue on it, first come first served.

    ``arrivals[i]`` is message i's arrival on an idle network, ``links[i]`` the
    shared link it crosses (-1: none, it is not delayed), ``service_s[i]`` the
    time it occupies that link (bits / link bandwidth). The i-th message of a
    link (in order of idle arrival, ties by position) leaves at
    ``d_i = max(a_i, d_{i-1} + s_i)``; unrolled, ``d_i = S_i + max_{j<=i}(a_j - S_j)``
    with ``S`` the running sum of service times, computed per link without a
    Python loop over messages. N messages arriving together on a link whose
    bandwidth is the path's bottleneck thus take N times one's transfer time.
    """
    out = np.asarray(arrivals, dtype=np.float64).copy()
    shared = np.flatnonzero(links >= 0)
    if len(shared) < 2:
        return out
    order = shared[np.lexsort((out[shared], links[shared]))]
    bounds = np.flatnonzero(np.diff(links[order])) + 1
    for group in np.split(order, bounds):
        if len(group) < 2:
            continue
        total = np.cumsum(service_s[group])
        out[group] = total + np.maximum.accumulate(out[group] - total)
    return out
