"""The delay-medoid (Eq. 1) is exact for sets of any size, on graphs whose positions mean nothing."""

import numpy as np
import pytest
from scipy.sparse import csgraph

from etree.network.model import NetworkModel
from etree.network.placement import BATCH, delay_medoid, medoid
from topologies import build_topology, latency_csgraph


def brute_force(latency, members: np.ndarray) -> int:
    """argmin over members of the summed delay to every member; ties: the smallest id."""
    members = np.unique(members)
    dist = csgraph.dijkstra(latency, directed=True, indices=members)[:, members]
    return int(members[int(np.argmin(dist.sum(1)))])


@pytest.mark.parametrize("kind", ["random_links", "random_geometric", "grid_2d"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_medoid_equals_brute_force_at_every_size(kind: str, seed: int) -> None:
    graph = build_topology(kind, 400, seed=seed)
    latency = latency_csgraph(graph)
    rng = np.random.default_rng(seed)
    for size in (1, 2, 7, BATCH, BATCH + 1, 150, 400):
        members = np.sort(rng.choice(400, size, replace=False))
        expected = brute_force(latency, members)
        assert medoid(latency, members) == expected, (kind, seed, size)
        centre = int(members[rng.integers(size)])
        row = csgraph.dijkstra(latency, directed=True, indices=[centre])[0]
        assert medoid(latency, members, row) == expected, (kind, seed, size, "with centre row")


def test_ties_go_to_the_smallest_id() -> None:
    """On a uniform grid many members tie; the rule picks the smallest id among the best."""
    graph = build_topology("grid_2d", 100, seed=0)
    latency = latency_csgraph(graph)
    members = np.arange(100)
    assert medoid(latency, members) == brute_force(latency, members)


def test_network_model_uses_the_same_rule() -> None:
    graph = build_topology("random_links", 300, seed=4)
    assert delay_medoid(NetworkModel(graph), np.arange(300)) == brute_force(latency_csgraph(graph), np.arange(300))
