"""Where devices are and how they connect: annotated networkx graphs and their delays.

Every generator returns a connected undirected graph with integer nodes
``0..n-1``, devices first (``role="device"``), then any edge servers and cloud;
nodes carry ``pos``, ``compute_flops`` and ``role``, links carry ``latency_s``
and ``bandwidth_bps``. Build one by name with :func:`build_topology`.
"""

# Importing the generator modules registers their generators.
from topologies import (  # noqa: F401
    edge_cloud,
    geometric,
    grid,
    loaders,
    random_links,
    scale_free,
)
from topologies.delays import (
    delay_matrix,
    delays_from,
    latency_csgraph,
    link_csgraphs,
    pair_path_costs,
    path_bottleneck_bandwidth,
    shortest_path_costs,
)
from topologies.errors import TopologyError
from topologies.geometric import connectivity_radius
from topologies.loaders import write_graphml
from topologies.registry import TOPOLOGIES, build_topology, register_topology, topology_options

__all__ = [
    "TOPOLOGIES",
    "TopologyError",
    "build_topology",
    "connectivity_radius",
    "delay_matrix",
    "delays_from",
    "latency_csgraph",
    "link_csgraphs",
    "pair_path_costs",
    "path_bottleneck_bandwidth",
    "register_topology",
    "shortest_path_costs",
    "topology_options",
    "write_graphml",
]
