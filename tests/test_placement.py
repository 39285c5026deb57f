"""The delay-medoid (Eq. 1) is exact for sets of any size, on graphs whose positions mean nothing."""

import numpy as np
import pytest
from helpers import label_sharded_workload
from scipy.sparse import csgraph

from etree.core.errors import ProtocolError
from etree.network import placement
from etree.network.model import NetworkModel
from etree.network.placement import BATCH, delay_centre, delay_medoid, medoid
from etree.protocols import make_protocol
from topologies import build_topology, latency_csgraph


def brute_force(latency, members: np.ndarray) -> int:
    """argmin over members of the summed delay to every member; ties (equal up to round-off): the smallest id."""
    members = np.unique(members)
    total = csgraph.dijkstra(latency, directed=True, indices=members)[:, members].sum(1)
    return int(members[int(np.argmax(total <= total.min() * (1 + 1e-12)))])


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


@pytest.mark.parametrize("kind", ["random_links", "random_geometric"])
@pytest.mark.parametrize("seed", [0, 1])
def test_delay_centre_is_the_smallest_largest_delay(kind: str, seed: int) -> None:
    """The authors' FL server rule: the node whose farthest device is nearest."""
    graph = build_topology(kind, 300, seed=seed)
    latency = latency_csgraph(graph)
    rng = np.random.default_rng(seed)
    for size in (3, 150, 300):
        members = np.sort(rng.choice(300, size, replace=False))
        dist = csgraph.dijkstra(latency, directed=True, indices=members)[:, members]
        expected = int(members[int(np.argmin(dist.max(1)))])
        assert delay_centre(NetworkModel(graph), members) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedavg_server_is_the_authors_delay_centre_on_random_links(seed: int) -> None:
    """FedAvg's server without a cloud node: smallest largest delay (``server = "medoid"``: Eq. 1)."""
    graph = build_topology("random_links", 100, seed=seed)
    workload = label_sharded_workload(100, seed, graph=graph)
    dist = csgraph.dijkstra(latency_csgraph(graph), directed=True)
    for server, expected in (("auto", dist.max(1).argmin()), ("medoid", dist.sum(1).argmin())):
        protocol = make_protocol("fedavg", "f", {"server": server})
        protocol.setup(workload)
        assert protocol.structure()["root"] == int(expected)


def test_fedavg_server_rules_are_checked() -> None:
    graph = build_topology("random_links", 20, seed=0)
    workload = label_sharded_workload(20, 0, graph=graph)
    for server, message in (("cloud", "needs a topology with a cloud node"), ("middle", "choose one of")):
        protocol = make_protocol("fedavg", "f", {"server": server})
        with pytest.raises(ProtocolError, match=message):
            protocol.setup(workload)


@pytest.mark.parametrize("kind", ["random_links", "random_geometric"])
def test_sets_past_the_sampled_size_cost_bounded_rows_and_find_a_near_exact_medoid(kind: str, monkeypatch) -> None:
    """Past SAMPLED_ABOVE members Eq. 1 starts from a sampled estimate: at most LARGE_SET_ROWS exact
    rows (plus the landmarks'), and on cluster-like sets (delay balls, as KMA makes) the member found
    is within 1% of the exact medoid's total delay, and the same set always gets the same answer."""
    monkeypatch.setattr(placement, "SAMPLED_ABOVE", 100)
    sources: list[int] = []
    original = placement._rows

    def counted(graph, chosen, limit=np.inf):
        sources.extend(np.atleast_1d(chosen).tolist())
        return original(graph, chosen, limit)

    monkeypatch.setattr(placement, "_rows", counted)
    graph = build_topology(kind, 2000, seed=3)
    latency = latency_csgraph(graph)
    for size in (400, 1200):
        row = original(latency, np.array([7]))[0]
        members = np.sort(np.argsort(row, kind="stable")[:size])
        sources.clear()
        got = medoid(latency, members)
        spent = len(sources)  # the sampled path always scores its sample and candidates
        assert (
            placement.SAMPLE_ROWS + placement.CANDIDATE_ROWS <= spent <= placement.LARGE_SET_ROWS + placement.LANDMARKS
        )
        assert medoid(latency, members) == got
        total = original(latency, members)[:, members].sum(1)
        assert total[np.searchsorted(members, got)] <= 1.01 * total.min(), (kind, size)


def test_a_row_cache_changes_no_answer_and_serves_a_slightly_changed_set(monkeypatch) -> None:
    """A sampled search gives the same member with a RowCache as without, and a set that lost a few
    members (as KMA's clusters do between iterations) keeps most of its sample and candidates: their
    rows come from the cache instead of new Dijkstra runs."""
    monkeypatch.setattr(placement, "SAMPLED_ABOVE", 100)
    graph = build_topology("random_links", 2000, seed=4)
    latency = latency_csgraph(graph)
    row = csgraph.dijkstra(latency, directed=True, indices=[11])[0]
    members = np.sort(np.argsort(row, kind="stable")[:600])
    cache = placement.RowCache(latency)
    assert medoid(latency, members, cache=cache) == medoid(latency, members)
    first = cache.computed
    assert 0 < first <= placement.LARGE_SET_ROWS + placement.LANDMARKS
    fewer = np.delete(members, np.random.default_rng(0).choice(len(members), 6, replace=False))
    assert medoid(latency, fewer, cache=cache) == medoid(latency, fewer)
    assert cache.computed - first < first / 2


def test_the_row_cache_is_bounded_and_exact_up_to_each_rows_cut_off() -> None:
    graph = build_topology("random_geometric", 300, seed=2)
    latency = latency_csgraph(graph)
    cache = placement.RowCache(latency, capacity=5 * 300)
    exact = csgraph.dijkstra(latency, directed=True, indices=np.arange(8))
    assert np.array_equal(cache.rows(np.arange(8)), exact)  # whole rows, held dense: 5 fit
    assert len(cache._rows) == 5 and cache.stored <= 5 * 300 and cache.computed == 8
    assert cache.get(0) is None and cache.get(7) is not None  # the oldest were dropped
    cut = float(np.quantile(exact, 0.1))
    near = cache.rows(np.arange(10, 20), cut)  # cut-off rows, held sparse: more fit
    nearby = csgraph.dijkstra(latency, directed=True, indices=np.arange(10, 20))
    within = nearby <= cut
    assert np.allclose(near[within], nearby[within]) and np.isinf(near[~within]).all()
    assert cache.stored <= 5 * 300 and len(cache._rows) > 5
    computed = cache.computed
    assert np.array_equal(cache.rows(np.array([19]), cut / 2), near[9:])  # a shorter cut-off: served
    assert cache.computed == computed
    assert np.allclose(cache.rows(np.array([19]))[0], nearby[9])  # a longer one than held: computed
    assert cache.computed == computed + 1
