"""The E-Tree paper's network: a connected random graph with a fixed number of links.

Yang et al., "E-Tree Learning: A Novel Decentralized Model Learning Framework
for Edge AI", IEEE IoT-J 8(14), 2021. The authors' simulator reads a random
connected undirected graph of 100 nodes and 300 edges with integer delays of
about 1 to 100 (``res/db/data100.in``). Their generator drew delays as a mean
plus Gaussian noise floored at 1, with parameters we do not have; drawing
integers uniformly in ``[min_latency_ms, max_latency_ms]`` is our choice, as is
the way the random graph is drawn (paper leaves both open).
"""

from numbers import Integral

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from topologies.attributes import BANDWIDTH_BPS, COMPUTE_FLOPS, annotated_graph, uniform_positions
from topologies.checks import check_devices, check_seed, positive_float, positive_int
from topologies.connectivity import derived_seed
from topologies.errors import TopologyError
from topologies.registry import register_topology

#: Below this many node pairs, extra links are drawn from the full list of free pairs.
_ENUMERATE_PAIRS = 4_000_000


def _random_tree(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    """A random recursive tree over a random node order: node k of the order joins an earlier one.

    Not uniform over spanning trees, but connected by construction, O(n) and
    vectorised.
    """
    order = rng.permutation(n)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    parents = order[(rng.random(n - 1) * np.arange(1, n)).astype(np.int64)]
    return np.column_stack([order[1:], parents]).astype(np.int64)


def _codes(edges: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """One integer per undirected pair: ``min * n + max``."""
    return np.minimum(edges[:, 0], edges[:, 1]) * n + np.maximum(edges[:, 0], edges[:, 1])


def _extra_links(rng: np.random.Generator, n: int, taken: NDArray[np.int64], count: int) -> NDArray[np.int64]:
    """``count`` distinct pairs, uniformly among pairs whose codes are not in ``taken``."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if n * (n - 1) // 2 <= _ENUMERATE_PAIRS:
        u, v = np.triu_indices(n, k=1)
        free = np.setdiff1d(u.astype(np.int64) * n + v, taken, assume_unique=True)
        return np.asarray(rng.choice(free, size=count, replace=False), dtype=np.int64)
    # Sparse in a huge pair space: draw batches, keep first occurrences of new pairs.
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < count:
        draws = rng.integers(0, n, size=(2 * (count - len(chosen)) + 16, 2))
        draws = draws[draws[:, 0] != draws[:, 1]]
        codes = _codes(draws.astype(np.int64), n)
        _, first = np.unique(codes, return_index=True)
        codes = codes[np.sort(first)]
        codes = codes[~np.isin(codes, taken) & ~np.isin(codes, chosen)]
        chosen = np.concatenate([chosen, codes[: count - len(chosen)]])
    return chosen


@register_topology("random_links")
def random_links(
    devices: int,
    *,
    seed: int,
    links: int | None = None,
    min_latency_ms: int = 1,
    max_latency_ms: int = 100,
    bandwidth_bps: float = BANDWIDTH_BPS,
    compute_flops: float = COMPUTE_FLOPS,
) -> nx.Graph:
    """Connected random graph with exactly ``links`` edges and integer-millisecond latencies.

    A random spanning tree makes it connected; the other ``links - (devices -
    1)`` edges are drawn uniformly from the remaining pairs. ``links``
    defaults to ``3 * devices`` (300 for the paper's 100 devices), capped at
    the complete graph. Positions are random and only for drawing.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    most = devices * (devices - 1) // 2
    if links is None:
        links = min(3 * devices, most)
    elif isinstance(links, bool) or not isinstance(links, Integral) or not devices - 1 <= links <= most:
        raise TopologyError(
            f"topology.links: {links!r} is not allowed; {devices} devices need an int in [{devices - 1}, {most}]"
        )
    low = positive_int("min_latency_ms", min_latency_ms)
    high = positive_int("max_latency_ms", max_latency_ms)
    if high < low:
        raise TopologyError(
            f"topology.max_latency_ms: {high!r} is not allowed; must be at least topology.min_latency_ms ({low})"
        )
    bandwidth = positive_float("bandwidth_bps", bandwidth_bps)
    flops = positive_float("compute_flops", compute_flops)

    rng = np.random.default_rng(derived_seed(seed, 0))
    tree = _random_tree(rng, devices)
    extra = _extra_links(rng, devices, np.sort(_codes(tree, devices)), links - len(tree))
    edges = np.concatenate([tree, np.column_stack(np.divmod(extra, devices))]).astype(np.int64)
    latency_ms = rng.integers(low, high + 1, size=len(edges))
    positions = uniform_positions(np.random.default_rng(derived_seed(seed, 1)), devices)
    return annotated_graph("random_links", devices, positions, edges, latency_ms / 1000.0, bandwidth, flops)
