"""Shortest-path latency and bottleneck bandwidth between nodes of a topology.

The simulated network times a message as path latency plus size over the
path's bottleneck bandwidth (docs/ARCHITECTURE.md, simulated time). Dijkstra runs in
scipy.sparse.csgraph (compiled, about 30x faster than networkx), and the
per-source functions never build an ``n x n`` matrix, so they serve fleets of
100,000 devices. Functions are pure: nothing is cached between calls.
"""

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse import csgraph

from topologies.errors import TopologyError


def _link_matrices(graph: nx.Graph, *weights: str) -> list[sparse.csr_array]:
    """One symmetric ``[n, n]`` CSR matrix per edge attribute, all with one sparsity pattern.

    Reads the adjacency dicts in a single pass, a few times faster than
    ``nx.to_scipy_sparse_array`` at a million links; the contract's node
    labels ``0..n-1`` are checked, not assumed.
    """
    if graph.is_directed() or graph.is_multigraph():
        raise TopologyError(
            f"graph: a {type(graph).__name__} is not allowed; topologies are simple undirected nx.Graph objects"
        )
    n = graph.number_of_nodes()
    nodes: list[Any] = []
    degrees: list[int] = []
    targets: list[Any] = []
    values: list[list[Any]] = [[] for _ in weights]
    try:
        for node, neighbours in graph.adjacency():
            nodes.append(node)
            degrees.append(len(neighbours))
            targets.extend(neighbours)
            for column, name in zip(values, weights, strict=True):
                column.extend(map(itemgetter(name), neighbours.values()))
    except KeyError as error:
        raise TopologyError(
            f"graph.edges: a link lacks attribute {error.args[0]!r}; build graphs with topologies.build_topology"
        ) from error
    labels = np.asarray(nodes if all(isinstance(v, int) for v in nodes) else [-1])
    if not np.array_equal(np.sort(labels), np.arange(n)):
        raise TopologyError(
            f"graph.nodes: graph nodes are not the integers 0..{n - 1}; build graphs with topologies.build_topology"
        )
    rows = np.repeat(labels.astype(np.int64), degrees)
    cols = np.asarray(targets, dtype=np.int64)
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return [
        sparse.csr_array((np.asarray(column, dtype=np.float64)[order], cols[order], indptr), shape=(n, n))
        for column in values
    ]


def latency_csgraph(graph: nx.Graph) -> sparse.csr_array:
    """Symmetric ``[n, n]`` sparse matrix of link latencies (seconds), for csgraph routines."""
    return _link_matrices(graph, "latency_s")[0]


def link_csgraphs(graph: nx.Graph) -> tuple[sparse.csr_array, sparse.csr_array]:
    """The latency and bandwidth csgraphs of a topology, read in one pass (same sparsity pattern),
    for callers that compute many rows (:func:`shortest_path_costs`) and should build them once."""
    latency, bandwidth = _link_matrices(graph, "latency_s", "bandwidth_bps")
    return latency, bandwidth


def _indices(graph: nx.Graph, nodes: Sequence[int], field: str) -> NDArray[np.int64]:
    n = graph.number_of_nodes()
    try:
        index = np.asarray(nodes, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise TopologyError(f"{field}: {nodes!r} is not a sequence of node ids") from error
    bad = index[(index < 0) | (index >= n)]
    if len(bad):
        raise TopologyError(f"{field}: node {int(bad[0])!r} is not in the graph; nodes are 0..{n - 1}")
    return index


def delays_from(graph: nx.Graph, sources: Sequence[int]) -> NDArray[np.float64]:
    """Shortest-path latency from each source to every node, shape ``[len(sources), n]``.

    One Dijkstra per source; ``inf`` marks unreachable nodes.
    """
    index = _indices(graph, sources, "sources")
    n = graph.number_of_nodes()
    if len(index) == 0:
        return np.empty((0, n), dtype=np.float64)
    # The matrix is symmetric, so directed=True gives undirected distances
    # without scipy symmetrising a copy.
    dist = csgraph.dijkstra(latency_csgraph(graph), directed=True, indices=index)
    return np.asarray(dist, dtype=np.float64).reshape(len(index), n)


def delay_matrix(graph: nx.Graph, nodes: Sequence[int] | None = None) -> NDArray[np.float64]:
    """All-pairs shortest-path latency (seconds) among ``nodes`` (default all), float64.

    Memory is ``len(nodes) * n`` floats; for large fleets pass the nodes that
    matter or use :func:`delays_from`.
    """
    index = np.arange(graph.number_of_nodes(), dtype=np.int64) if nodes is None else _indices(graph, nodes, "nodes")
    return delays_from(graph, index.tolist())[:, index]


def path_bottleneck_bandwidth(graph: nx.Graph, sources: Sequence[int]) -> NDArray[np.float64]:
    """Least ``bandwidth_bps`` along the latency-shortest path from each source to every node.

    Shape ``[len(sources), n]``; ``inf`` from a source to itself, ``0`` where
    unreachable. Each source's shortest-path tree comes from Dijkstra's
    predecessors; the minimum up the tree is taken by pointer jumping, all
    targets at once (log(depth) vectorised steps, no loop over targets).
    """
    index = _indices(graph, sources, "sources")
    n = graph.number_of_nodes()
    if len(index) == 0:
        return np.empty((0, n), dtype=np.float64)
    latency, bandwidth = _link_matrices(graph, "latency_s", "bandwidth_bps")
    return shortest_path_costs(latency, bandwidth, index)[1]


def shortest_path_costs(
    latency: sparse.csr_array, bandwidth: sparse.csr_array, sources: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """From one Dijkstra per source on :func:`link_csgraphs`' matrices: the path latency, the
    bottleneck bandwidth (as :func:`path_bottleneck_bandwidth`) and the shortest-path tree
    (predecessors, -9999 at the source and where unreachable) from each source to every node."""
    index = np.asarray(sources, dtype=np.int64).reshape(-1)
    n = latency.shape[0]
    dist, pred = csgraph.dijkstra(latency, directed=True, indices=index, return_predecessors=True)
    pred = np.asarray(pred, dtype=np.int64).reshape(len(index), n)
    dist = np.asarray(dist).reshape(len(index), n)

    # Bandwidth of each node's link to its predecessor, looked up by its
    # (row, col) code in the CSR structure, whose codes are sorted.
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(bandwidth.indptr))
    codes = rows * n + bandwidth.indices.astype(np.int64)
    has_parent = pred >= 0
    targets = np.broadcast_to(np.arange(n, dtype=np.int64), pred.shape)
    wanted = pred[has_parent] * n + targets[has_parent]
    slot = np.searchsorted(codes, wanted)

    # A sentinel node n (bottleneck inf, its own ancestor) ends every chain.
    best = np.full((len(index), n + 1), np.inf)
    best[:, :n][has_parent] = bandwidth.data[slot]
    up = np.full((len(index), n + 1), n, dtype=np.int64)
    up[:, :n][has_parent] = pred[has_parent]
    while np.any(up[:, :n] != n):
        best = np.minimum(best, np.take_along_axis(best, up, axis=1))
        up = np.take_along_axis(up, up, axis=1)
    result = best[:, :n]
    result[~np.isfinite(dist)] = 0.0
    return dist, result, pred


PAIR_BATCH = 256  # Dijkstra sources per batch in :func:`pair_path_costs`


def pair_path_costs(
    graph: nx.Graph, sources: NDArray[np.int64], targets: NDArray[np.int64], bound: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Latency and bottleneck bandwidth of the latency-shortest path of each pair ``(sources[i], targets[i])``.

    For many scattered pairs (a gossip overlay), where full rows would be wasted:
    ``bound[i]`` is an upper bound on pair i's latency, so each Dijkstra stops there
    (``limit``) and costs a local ball. The bottleneck is read by walking each pair's
    predecessor chain, all pairs at once.
    """
    latency, bandwidth = _link_matrices(graph, "latency_s", "bandwidth_bps")
    n = graph.number_of_nodes()
    codes = np.repeat(np.arange(n, dtype=np.int64), np.diff(bandwidth.indptr)) * n + bandwidth.indices
    path_latency = np.empty(len(sources))
    bottleneck = np.empty(len(sources))
    order = np.argsort(bound, kind="stable")  # batches of similar bounds keep each ball small
    unique, first = np.unique(sources[order], return_index=True)
    by_bound = unique[np.argsort(first, kind="stable")]
    for start in range(0, len(by_bound), PAIR_BATCH):
        chunk = by_bound[start : start + PAIR_BATCH]
        row_of = np.full(n, -1)
        row_of[chunk] = np.arange(len(chunk))
        mine = np.flatnonzero(row_of[sources] >= 0)
        limit = float(bound[mine].max()) * (1 + 1e-9)
        dist, pred = csgraph.dijkstra(latency, directed=True, indices=chunk, limit=limit, return_predecessors=True)
        rows, here, goal = row_of[sources[mine]], targets[mine].copy(), sources[mine]
        found = dist[rows, here]
        if not np.all(np.isfinite(found)):
            raise TopologyError("bound: a pair is farther than its latency bound; pass an upper bound per pair")
        slowest = np.full(len(mine), np.inf)
        walking = here != goal
        while walking.any():
            step = np.flatnonzero(walking)
            back = pred[rows[step], here[step]]
            link = np.searchsorted(codes, back * n + here[step])
            slowest[step] = np.minimum(slowest[step], bandwidth.data[link])
            here[step] = back
            walking = here != goal
        path_latency[mine], bottleneck[mine] = found, slowest
    return path_latency, bottleneck
