"""Scale-free device graphs (Barabási–Albert preferential attachment)."""

import networkx as nx
import numpy as np

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
from topologies.checks import check_devices, check_seed, positive_int
from topologies.connectivity import derived_seed
from topologies.errors import TopologyError
from topologies.registry import register_topology


@register_topology("barabasi_albert")
def barabasi_albert(
    devices: int,
    *,
    seed: int,
    m: int = 2,
    base_latency_s: float = BASE_LATENCY_S,
    latency_per_unit_s: float = LATENCY_PER_UNIT_S,
    bandwidth_bps: float = BANDWIDTH_BPS,
    compute_flops: float = COMPUTE_FLOPS,
) -> nx.Graph:
    """Preferential attachment: each new device links to ``m`` devices, favouring hubs.

    Barabási & Albert, "Emergence of scaling in random networks", Science
    1999: a heavy-tailed degree distribution like peer-to-peer overlays. The
    model has no geometry, so positions are drawn uniformly at random (our
    choice) and latency follows the drawn link length. Always connected;
    needs ``m < devices``.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    m = positive_int("m", m)
    links = LinkModel(base_latency_s, latency_per_unit_s, bandwidth_bps, compute_flops)
    if m >= devices:
        raise TopologyError(f"topology.m: {m!r} is not allowed; must be below topology.devices ({devices})")
    graph = nx.barabasi_albert_graph(devices, m, seed=derived_seed(seed, 0))
    positions = uniform_positions(np.random.default_rng(derived_seed(seed, 1)), devices)
    return geometric_graph("barabasi_albert", devices, positions, as_edge_array(list(graph.edges())), links)
