"""Spatial random graphs in the unit square: random geometric and Waxman.

Both place devices uniformly at random and derive each link's latency from its
length (:func:`topologies.attributes.geometric_latency`), so nearby devices
talk fast, as in a wireless or metro edge network.
"""

import math

import networkx as nx
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import KDTree

from topologies.attributes import (
    BANDWIDTH_BPS,
    BASE_LATENCY_S,
    COMPUTE_FLOPS,
    LATENCY_PER_UNIT_S,
    LinkModel,
    as_edge_array,
    geometric_graph,
    uniform_positions,
)
from topologies.checks import check_devices, check_seed, positive_float
from topologies.connectivity import component_count, retry_until_connected
from topologies.errors import TopologyError
from topologies.registry import register_topology

Layout = tuple[NDArray[np.float64], NDArray[np.int64]]


def connectivity_radius(devices: int) -> float:
    """Radius that connects ``devices`` uniform points in the unit square w.h.p.

    Connectivity of a random geometric graph sets in near ``pi r^2 n = ln n``
    (Penrose 1997; Gupta & Kumar 1998, "Critical power for asymptotic
    connectivity in wireless networks"). Twice that area,
    ``r = sqrt(2 ln n / (pi n))``, leaves margin for the square's border,
    where nodes have fewer neighbours. One or two devices use ``ln 2``.
    """
    n = max(devices, 2)
    return math.sqrt(2.0 * math.log(n) / (math.pi * n))


def _geometric_layout(devices: int, radius: float, seed: int) -> Layout:
    positions = uniform_positions(np.random.default_rng(seed), devices)
    # KD-tree pair search: O(n log n + edges), so 100,000 devices take seconds.
    edges = as_edge_array(KDTree(positions).query_pairs(radius, output_type="ndarray"))
    return positions, edges


@register_topology("random_geometric")
def random_geometric(
    devices: int,
    *,
    seed: int,
    radius: float | None = None,
    base_latency_s: float = BASE_LATENCY_S,
    latency_per_unit_s: float = LATENCY_PER_UNIT_S,
    bandwidth_bps: float = BANDWIDTH_BPS,
    compute_flops: float = COMPUTE_FLOPS,
) -> nx.Graph:
    """Random geometric graph: devices within ``radius`` of each other are linked.

    The standard model of wireless ad hoc and edge networks (Penrose, "Random
    Geometric Graphs", 2003). ``radius`` defaults to
    :func:`connectivity_radius`; a disconnected draw is redrawn up to 20 times.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    links = LinkModel(base_latency_s, latency_per_unit_s, bandwidth_bps, compute_flops)
    r = connectivity_radius(devices) if radius is None else positive_float("radius", radius)
    positions, edges = retry_until_connected(
        lambda s: _geometric_layout(devices, r, s),
        lambda layout: component_count(devices, layout[1]) == 1,
        seed=seed,
        field="topology.radius",
        value=r,
        hint=(f"raise topology.radius (about {connectivity_radius(devices):.3g} connects {devices} devices w.h.p.)"),
    )
    return geometric_graph(
        "random_geometric",
        devices,
        positions,
        edges,
        links,
    )


def _waxman_layout(devices: int, alpha: float, beta: float, seed: int) -> Layout:
    # L is fixed to the square's diagonal rather than networkx's default (the
    # largest distance drawn), so link odds do not depend on how spread out a
    # small draw happens to be.
    graph = nx.waxman_graph(devices, beta=beta, alpha=alpha, L=math.sqrt(2.0), seed=seed)
    positions = np.array([graph.nodes[i]["pos"] for i in range(devices)], dtype=np.float64)
    return positions.reshape(devices, 2), as_edge_array(list(graph.edges()))


@register_topology("waxman")
def waxman(
    devices: int,
    *,
    seed: int,
    alpha: float = 0.4,
    beta: float = 0.6,
    base_latency_s: float = BASE_LATENCY_S,
    latency_per_unit_s: float = LATENCY_PER_UNIT_S,
    bandwidth_bps: float = BANDWIDTH_BPS,
    compute_flops: float = COMPUTE_FLOPS,
) -> nx.Graph:
    """Waxman graph: devices ``u, v`` at distance ``d`` link with odds ``beta exp(-d / (alpha L))``.

    Waxman, "Routing of multipoint connections", IEEE JSAC 1988; the classic
    model of wide-area networks with mostly short and some long links. ``L``
    is the unit square's diagonal. Defaults (alpha 0.4, beta 0.6; networkx's
    0.1 / 0.4 leave fleets under a few hundred disconnected) connect about 20
    or more devices reliably; smaller fleets may need larger alpha or beta.
    networkx draws every pair, O(n^2): fine up to a few thousand devices.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    links = LinkModel(base_latency_s, latency_per_unit_s, bandwidth_bps, compute_flops)
    alpha = positive_float("alpha", alpha)
    beta = positive_float("beta", beta)
    if beta > 1:
        raise TopologyError(f"topology.beta: {beta!r} is not allowed; must be in (0, 1]")
    positions, edges = retry_until_connected(
        lambda s: _waxman_layout(devices, alpha, beta, s),
        lambda layout: component_count(devices, layout[1]) == 1,
        seed=seed,
        field="topology.alpha",
        value=alpha,
        hint="raise topology.alpha (longer links) or topology.beta (more links)",
    )
    return geometric_graph(
        "waxman",
        devices,
        positions,
        edges,
        links,
    )
