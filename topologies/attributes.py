"""Default link and node attributes, and the one place a graph is annotated.

Every generator produces arrays (positions, an edge list, per-edge latency and
bandwidth, per-node compute and role) and hands them to :func:`annotated_graph`,
so the graph contract (docs/ARCHITECTURE.md, topologies layer) is written once: integer
nodes ``0..n-1`` added in order, devices first, edges in sorted ``(u, v)``
order with ``u < v``, and plain Python floats in every attribute so graphml
stores them exactly.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from topologies.checks import positive_float

#: Fixed per-hop latency (switching, MAC access) of a geometric link, seconds.
BASE_LATENCY_S = 1e-3
#: Latency per unit of distance in the unit square, seconds; with the base it
#: spans 1 ms to about 72 ms across the square, the range of metro to regional
#: edge links.
LATENCY_PER_UNIT_S = 50e-3
#: Link bandwidth, bits per second (100 Mbit/s).
BANDWIDTH_BPS = 1e8
#: Compute speed of a device, FLOP/s (a low-end phone-class CPU).
COMPUTE_FLOPS = 1e9

ROLES = ("device", "edge", "cloud")


def uniform_positions(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    """``n`` points drawn uniformly in the unit square, shape ``[n, 2]``."""
    return rng.random((n, 2))


def distances(positions: NDArray[np.float64], edges: NDArray[np.int64]) -> NDArray[np.float64]:
    """Euclidean length of each edge, vectorised over the edge list."""
    delta = positions[edges[:, 0]] - positions[edges[:, 1]]
    return np.asarray(np.hypot(delta[:, 0], delta[:, 1]), dtype=np.float64)


def geometric_latency(
    positions: NDArray[np.float64],
    edges: NDArray[np.int64],
    base_latency_s: float = BASE_LATENCY_S,
    latency_per_unit_s: float = LATENCY_PER_UNIT_S,
) -> NDArray[np.float64]:
    """Latency of each edge as ``base + distance * per_unit``.

    A linear propagation model: a fixed per-hop cost plus a term proportional
    to distance. The base keeps latency positive even for coincident points.
    """
    return base_latency_s + distances(positions, edges) * latency_per_unit_s


def as_edge_array(edges: ArrayLike) -> NDArray[np.int64]:
    """Edge list as an ``[m, 2]`` int64 array, also for an empty list."""
    return np.asarray(edges, dtype=np.int64).reshape(-1, 2)


def _per_item(value: ArrayLike, count: int) -> list[float]:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (count,)).tolist()


def annotated_graph(
    kind: str,
    devices: int,
    positions: NDArray[np.float64],
    edges: ArrayLike,
    latency_s: ArrayLike,
    bandwidth_bps: ArrayLike = BANDWIDTH_BPS,
    compute_flops: ArrayLike = COMPUTE_FLOPS,
    roles: Sequence[str] | None = None,
) -> nx.Graph:
    """Build the contract graph from arrays.

    ``latency_s``, ``bandwidth_bps`` and ``compute_flops`` are scalars or one
    value per edge / node. Nodes without a given role are devices. Edges are
    stored as ``u < v`` in sorted order, so equal arrays give an identical
    graph, node and edge order included.
    """
    n = len(positions)
    pairs = as_edge_array(edges)
    m = len(pairs)
    lows = np.minimum(pairs[:, 0], pairs[:, 1])
    highs = np.maximum(pairs[:, 0], pairs[:, 1])
    order = np.lexsort((highs, lows))
    latency = np.broadcast_to(np.asarray(latency_s, dtype=np.float64), (m,))[order]
    bandwidth = np.broadcast_to(np.asarray(bandwidth_bps, dtype=np.float64), (m,))[order]

    graph = nx.Graph(kind=kind, devices=devices)
    node_roles = list(roles) if roles is not None else ["device"] * n
    graph.add_nodes_from(
        (i, {"pos": (x, y), "compute_flops": flops, "role": role})
        for i, ((x, y), flops, role) in enumerate(
            zip(positions.tolist(), _per_item(compute_flops, n), node_roles, strict=True)
        )
    )
    graph.add_edges_from(
        (u, v, {"latency_s": lat, "bandwidth_bps": bw})
        for u, v, lat, bw in zip(
            lows[order].tolist(),
            highs[order].tolist(),
            latency.tolist(),
            bandwidth.tolist(),
            strict=True,
        )
    )
    return graph


@dataclass(frozen=True)
class LinkModel:
    """Options shared by flat graphs whose link latency follows link length.

    Built at the top of a generator so bad values fail before any drawing.
    """

    base_latency_s: float = BASE_LATENCY_S
    latency_per_unit_s: float = LATENCY_PER_UNIT_S
    bandwidth_bps: float = BANDWIDTH_BPS
    compute_flops: float = COMPUTE_FLOPS

    def __post_init__(self) -> None:
        for item in fields(self):
            object.__setattr__(self, item.name, positive_float(item.name, getattr(self, item.name)))


def geometric_graph(
    kind: str,
    devices: int,
    positions: NDArray[np.float64],
    edges: ArrayLike,
    links: LinkModel,
) -> nx.Graph:
    """Annotate a flat device graph: latency from link length, uniform bandwidth and compute."""
    pairs = as_edge_array(edges)
    latency = geometric_latency(positions, pairs, links.base_latency_s, links.latency_per_unit_s)
    return annotated_graph(kind, devices, positions, pairs, latency, links.bandwidth_bps, links.compute_flops)
