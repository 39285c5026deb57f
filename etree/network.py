"""What moving a model between two nodes, or training on a device, costs in simulated seconds.

Delay of a message = latency of the latency-shortest path + bits / the
bottleneck bandwidth on that path; compute time = FLOPs / the node's
``compute_flops``. Rows are computed per source node with single-source
Dijkstra (``topologies.delays_from``), never as an N x N matrix, and cached.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
import numpy as np

from topologies import delays_from, path_bottleneck_bandwidth


class NetworkModel:
    """Transfer and compute times on one topology graph."""

    def __init__(self, graph: nx.Graph) -> None:
        self.graph = graph
        self.nodes = graph.number_of_nodes()
        self.compute_flops = np.array([graph.nodes[n]["compute_flops"] for n in range(self.nodes)], dtype=np.float64)
        self._latency: dict[int, np.ndarray] = {}
        self._bandwidth: dict[int, np.ndarray] = {}

    def prepare(self, sources: Iterable[int]) -> None:
        """Compute the rows of ``sources`` in one batch (cheaper than one call per source)."""
        missing = sorted({int(s) for s in sources} - self._latency.keys())
        if not missing:
            return
        latency = delays_from(self.graph, missing)
        bandwidth = path_bottleneck_bandwidth(self.graph, missing)
        for row, source in enumerate(missing):
            self._latency[source] = latency[row]
            self._bandwidth[source] = bandwidth[row]

    def latency_s(self, source: int, targets: np.ndarray) -> np.ndarray:
        """Path latency from ``source`` to each of ``targets`` (the graph is undirected: symmetric)."""
        self.prepare([source])
        return self._latency[int(source)][targets]

    def transfer_s(self, source: int, targets: np.ndarray, nbytes: int) -> np.ndarray:
        """Seconds for a message of ``nbytes`` between ``source`` and each target; 0 to itself."""
        self.prepare([source])
        bandwidth = self._bandwidth[int(source)][targets]
        return self._latency[int(source)][targets] + 8.0 * nbytes / bandwidth

    def compute_s(self, nodes: np.ndarray, flops: np.ndarray) -> np.ndarray:
        """Seconds each node needs for ``flops`` floating-point operations."""
        return flops / self.compute_flops[nodes]
