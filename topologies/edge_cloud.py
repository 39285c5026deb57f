"""A three-tier device / edge-server / cloud hierarchy (multi-access edge computing).

Devices reach the network only through their nearest edge server over a
wireless access link (slow, narrow); edge servers form a metro backbone (fast,
wide) and each has a wide-area link to one cloud node (wide but far). This is
the reference layout of hierarchical federated learning, e.g. Liu et al.,
"Client-Edge-Cloud Hierarchical Federated Learning", ICC 2020, and the ETSI
MEC architecture. Devices of one edge server share no direct link: traffic
between them is relayed by the edge server, as in a cellular cell.
"""

import networkx as nx
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import KDTree

from topologies.attributes import (
    COMPUTE_FLOPS,
    annotated_graph,
    geometric_latency,
    uniform_positions,
)
from topologies.checks import check_devices, check_seed, one_of, positive_float, positive_int
from topologies.connectivity import derived_seed
from topologies.registry import register_topology

BACKBONES = ("mesh", "ring")

#: Where the cloud node is drawn: it has no place in the edge area.
CLOUD_POSITION = (0.5, 1.0)


def _ring(positions: NDArray[np.float64]) -> NDArray[np.int64]:
    """Ring through the edge servers in order of angle around the area's centre."""
    count = len(positions)
    order = np.argsort(np.arctan2(positions[:, 1] - 0.5, positions[:, 0] - 0.5), kind="stable")
    if count < 3:  # one server has no ring; two share a single link
        return np.column_stack([order[:-1], order[1:]]).astype(np.int64)
    return np.column_stack([order, np.roll(order, -1)]).astype(np.int64)


def _nearest_mesh(positions: NDArray[np.float64], k: int) -> NDArray[np.int64]:
    """Each edge server links to its ``k`` nearest other servers (union, undirected)."""
    count = len(positions)
    k = min(k, count - 1)
    if k < 1:
        return np.empty((0, 2), dtype=np.int64)
    _, neighbours = KDTree(positions).query(positions, k=k + 1)
    sources = np.repeat(np.arange(count), k)
    targets = np.asarray(neighbours)[:, 1:].reshape(-1)
    pairs = np.column_stack([np.minimum(sources, targets), np.maximum(sources, targets)])
    return np.unique(pairs, axis=0).astype(np.int64)


@register_topology("edge_cloud")
def edge_cloud(
    devices: int,
    *,
    seed: int,
    edge_servers: int | None = None,
    backbone: str = "ring",
    mesh_k: int = 3,
    access_base_latency_s: float = 5e-3,
    access_latency_per_unit_s: float = 50e-3,
    access_bandwidth_bps: float = 2e7,
    metro_base_latency_s: float = 1e-3,
    metro_latency_per_unit_s: float = 10e-3,
    metro_bandwidth_bps: float = 1e9,
    cloud_latency_s: float = 30e-3,
    cloud_bandwidth_bps: float = 1e10,
    compute_flops: float = COMPUTE_FLOPS,
    edge_compute_flops: float = 1e11,
    cloud_compute_flops: float = 1e13,
) -> nx.Graph:
    """Devices ``0..devices-1``, edge servers next, the cloud last.

    ``edge_servers`` defaults to ``max(1, devices // 20)``; devices and
    servers are placed uniformly at random and each device attaches to its
    nearest server. ``backbone`` links the servers in a ``"ring"`` (by angle
    around the centre) or a ``"mesh"`` of ``mesh_k`` nearest neighbours.
    Access (5 ms + distance, 20 Mbit/s wireless uplink) and metro (1 ms +
    distance, 1 Gbit/s fibre) latencies grow with length; the cloud link is a
    fixed 30 ms wide-area hop at 10 Gbit/s. Defaults are typical figures, not
    measurements. Always connected: every server links to the cloud.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    servers = max(1, devices // 20) if edge_servers is None else positive_int("edge_servers", edge_servers)
    backbone = one_of("backbone", backbone, BACKBONES)
    mesh_k = positive_int("mesh_k", mesh_k)
    access = (
        positive_float("access_base_latency_s", access_base_latency_s),
        positive_float("access_latency_per_unit_s", access_latency_per_unit_s),
    )
    metro = (
        positive_float("metro_base_latency_s", metro_base_latency_s),
        positive_float("metro_latency_per_unit_s", metro_latency_per_unit_s),
    )
    bandwidths = [
        positive_float(name, value)
        for name, value in (
            ("access_bandwidth_bps", access_bandwidth_bps),
            ("metro_bandwidth_bps", metro_bandwidth_bps),
            ("cloud_bandwidth_bps", cloud_bandwidth_bps),
        )
    ]
    flops = [
        positive_float(name, value)
        for name, value in (
            ("compute_flops", compute_flops),
            ("edge_compute_flops", edge_compute_flops),
            ("cloud_compute_flops", cloud_compute_flops),
        )
    ]
    cloud_latency = positive_float("cloud_latency_s", cloud_latency_s)

    device_pos = uniform_positions(np.random.default_rng(derived_seed(seed, 0)), devices)
    server_pos = uniform_positions(np.random.default_rng(derived_seed(seed, 1)), servers)
    positions = np.vstack([device_pos, server_pos, np.array([CLOUD_POSITION])])
    first_server, cloud = devices, devices + servers

    _, nearest = KDTree(server_pos).query(device_pos)
    access_edges = np.column_stack([np.arange(devices), first_server + np.asarray(nearest)])
    local = _ring(server_pos) if backbone == "ring" else _nearest_mesh(server_pos, mesh_k)
    metro_edges = first_server + local
    cloud_edges = np.column_stack([np.arange(first_server, cloud), np.full(servers, cloud)])

    tiers = (access_edges, metro_edges, cloud_edges)
    latency = np.concatenate(
        [
            geometric_latency(positions, access_edges, *access),
            geometric_latency(positions, metro_edges, *metro),
            np.full(servers, cloud_latency),
        ]
    )
    bandwidth = np.concatenate([np.full(len(edges), bw) for edges, bw in zip(tiers, bandwidths, strict=True)])
    counts = (devices, servers, 1)
    node_flops = np.concatenate([np.full(c, f) for c, f in zip(counts, flops, strict=True)])
    roles = ["device"] * devices + ["edge"] * servers + ["cloud"]
    return annotated_graph(
        "edge_cloud",
        devices,
        positions,
        np.concatenate(tiers),
        latency,
        bandwidth,
        node_flops,
        roles,
    )
