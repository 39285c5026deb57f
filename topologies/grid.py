"""A near-square 2-D grid of devices (a planned deployment, e.g. sensors or street cabinets)."""

import math

import networkx as nx
import numpy as np

from topologies.attributes import (
    BANDWIDTH_BPS,
    BASE_LATENCY_S,
    COMPUTE_FLOPS,
    LATENCY_PER_UNIT_S,
    LinkModel,
    geometric_graph,
)
from topologies.checks import check_devices, check_seed
from topologies.registry import register_topology


@register_topology("grid_2d")
def grid_2d(
    devices: int,
    *,
    seed: int,
    base_latency_s: float = BASE_LATENCY_S,
    latency_per_unit_s: float = LATENCY_PER_UNIT_S,
    bandwidth_bps: float = BANDWIDTH_BPS,
    compute_flops: float = COMPUTE_FLOPS,
) -> nx.Graph:
    """Exactly ``devices`` nodes on a ``rows x cols`` grid, filled in row-major order.

    ``cols = ceil(sqrt(devices))`` and ``rows = ceil(devices / cols)``; the
    last row may be partial, and each of its nodes still links to the node
    above, so the grid stays connected. Nodes sit at cell centres with spacing
    ``1 / cols``. Deterministic: ``seed`` is accepted for a uniform signature.
    """
    devices = check_devices(devices)
    check_seed(seed)
    links = LinkModel(base_latency_s, latency_per_unit_s, bandwidth_bps, compute_flops)
    cols = math.isqrt(devices - 1) + 1
    ids = np.arange(devices, dtype=np.int64)
    row, col = np.divmod(ids, cols)
    positions = np.column_stack([(col + 0.5) / cols, (row + 0.5) / cols]).astype(np.float64)
    across = ids[(col < cols - 1) & (ids + 1 < devices)]
    down = ids[ids + cols < devices]
    edges = np.concatenate([np.column_stack([across, across + 1]), np.column_stack([down, down + cols])])
    return geometric_graph("grid_2d", devices, positions, edges, links)
