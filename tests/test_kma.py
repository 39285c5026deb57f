"""KMA (E-Tree paper, Algorithm 1), delay k-medoids, Eq. 1 medoids and public nodes (Algorithm 2)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from etree.network.model import NetworkModel
from etree.network.placement import delay_medoid
from etree.trees.kma import (
    DelayOracle,
    kma_assignment,
    kma_clusters,
    kmedoids_clusters,
    nearest_assignment,
)
from etree.trees.public_nodes import select_public_nodes
from topologies import build_topology, delay_matrix

SEEDS = [0, 1, 2, 3]


def _network(kind: str, devices: int, seed: int) -> NetworkModel:
    return NetworkModel(build_topology(kind, devices, seed=seed))


def _replay(delays, centres, accuracy, delta, candidates, labels, accepted):
    """Re-run Algorithm 1's assignment by hand and check every decision the rule made."""
    k, n = delays.shape
    target = accuracy.mean()
    means = {c: accuracy[centres[c]] for c in range(k)}
    sizes = dict.fromkeys(range(k), 1)
    for i in range(n):
        if i in set(centres.tolist()):
            assert labels[i] == list(centres).index(i)
            continue
        tried = np.argsort(delays[:, i], kind="stable")[:candidates]
        j = labels[i]
        new = (means[j] * sizes[j] + accuracy[i]) / (sizes[j] + 1)
        if accepted[i]:
            assert j in tried
            assert abs(new - target) < delta  # the rule's invariant where it accepted
            for earlier in tried[: list(tried).index(j)]:  # nearer candidates were refused
                trial = (means[earlier] * sizes[earlier] + accuracy[i]) / (sizes[earlier] + 1)
                assert abs(trial - target) >= delta
        else:
            assert j == tried[0]  # fallback: the nearest centre
            for c in tried:
                trial = (means[c] * sizes[c] + accuracy[i]) / (sizes[c] + 1)
                assert abs(trial - target) >= delta
        means[j], sizes[j] = new, sizes[j] + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_kma_assignment_keeps_accepted_running_means_within_delta(seed):
    rng = np.random.default_rng(seed)
    k, n = 6, 80
    delays = rng.random((k, n))
    centres = np.sort(rng.choice(n, k, replace=False))
    delays[np.arange(k), centres] = 0.0
    accuracy = rng.uniform(0.2, 0.9, n)
    for delta in (0.02, 0.05, 0.09):
        labels, accepted = kma_assignment(delays, centres, accuracy, delta, k // 2)
        assert accepted.any()
        _replay(delays, centres, accuracy, delta, k // 2, labels, accepted)


@pytest.mark.parametrize("seed", SEEDS)
def test_infinite_delta_is_nearest_centre_assignment(seed):
    rng = np.random.default_rng(seed)
    delays = rng.integers(1, 5, size=(5, 60)).astype(float)  # many ties: both break them the same way
    centres = np.sort(rng.choice(60, 5, replace=False))
    delays[np.arange(5), centres] = 0.0
    labels, accepted = kma_assignment(delays, centres, rng.random(60), 1e9, 2)
    assert np.array_equal(labels, nearest_assignment(delays, centres))
    assert accepted.sum() == 60 - 5


@pytest.mark.parametrize("seed", SEEDS)
def test_kma_with_infinite_delta_equals_kmedoids(seed):
    net = _network("random_links", 40, seed)
    accuracy = np.random.default_rng(seed).random(40)
    kma = kma_clusters(net, accuracy, 5, delta=1e9, rng=np.random.default_rng(seed))
    kmed = kmedoids_clusters(net, 5, rng=np.random.default_rng(seed))
    assert np.array_equal(kma.labels, kmed.labels)
    assert np.array_equal(kma.centres, kmed.centres)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["kma", "kmedoids"])
def test_centres_are_delay_medoids_of_their_clusters(seed, method):
    net = _network("random_links", 40, seed)
    accuracy = np.random.default_rng(seed + 10).uniform(0.3, 0.9, 40)
    rng = np.random.default_rng(seed)
    found = kma_clusters(net, accuracy, 6, rng=rng) if method == "kma" else kmedoids_clusters(net, 6, rng=rng)
    full = delay_matrix(net.graph)
    assert sorted(np.unique(found.labels).tolist()) == list(range(6))
    assert len(set(found.centres.tolist())) == 6
    for cluster, centre in enumerate(found.centres):
        members = found.members(cluster)
        assert centre in members
        totals = full[np.ix_(members, members)].sum(0)
        assert full[centre, members].sum() <= totals.min() + 1e-9  # Eq. 1 (latencies are integer ms: ties)


@pytest.mark.parametrize("seed", SEEDS)
def test_clustering_is_deterministic_per_generator_seed(seed):
    net = _network("random_links", 50, seed)
    accuracy = np.random.default_rng(seed).random(50)
    a = kma_clusters(net, accuracy, 4, rng=np.random.default_rng(7))
    b = kma_clusters(net, accuracy, 4, rng=np.random.default_rng(7))
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centres, b.centres)
    assert a.iterations == b.iterations and a.converged == b.converged


def test_kmedoids_of_a_subset_and_single_cluster():
    net = _network("random_links", 30, 4)
    subset = np.array([3, 7, 11, 19, 25, 28])
    two = kmedoids_clusters(net, 2, nodes=subset, rng=np.random.default_rng(0))
    assert np.array_equal(two.nodes, subset) and set(two.centres) <= set(subset)
    one = kmedoids_clusters(net, 1, nodes=subset, rng=np.random.default_rng(0))
    assert one.centres.tolist() == [delay_medoid(net, subset)]


def test_bad_cluster_count_is_refused():
    net = _network("random_links", 10, 0)
    with pytest.raises(ValueError, match="clusters"):
        kmedoids_clusters(net, 11, rng=np.random.default_rng(0))


# -- Algorithm 2 -------------------------------------------------------------
def test_public_node_selection_by_hand():
    # two clusters {0,1,2} (centre 0) and {3,4,5} (centre 3); global mean 0.5
    labels = np.array([0, 0, 0, 1, 1, 1])
    accuracy = np.array([0.5, 0.4, 0.6, 0.5, 0.45, 0.55])
    centre_delays = np.array([[0, 1, 2, 9, 9, 9], [9, 9, 9, 0, 1, 2]], dtype=float)
    centre_delays[:, 2] = [2.0, 2.0]  # device 2 is the most central, then device 5 (mean 5.5)...
    centre_delays[:, 5] = [3.5, 2.0]
    chosen = select_public_nodes(centre_delays, labels, accuracy, gamma=0.5, delta=0.05, exclude=np.array([0, 3]))
    # candidates (centres excluded, 3 = 0.5 * 6): 2 (r=2), 5 (r=2.75), then 1 (r=5, id before 4);
    # 2 (0.6) into cluster 1: 0.525, kept; 5 (0.55) into cluster 0: 0.5125, kept; 1 (0.4) into cluster 1: 0.5
    assert chosen.tolist() == [1, 2, 5]
    strict = select_public_nodes(centre_delays, labels, accuracy, gamma=0.5, delta=0.02, exclude=np.array([0, 3]))
    # 2 would move cluster 1 to 0.525 (0.025 off): refused; 5 kept (0.5125); 1 would give cluster 1 0.475: refused
    assert strict.tolist() == [5]
    none = select_public_nodes(centre_delays, labels, accuracy, gamma=0.5, delta=0.001, exclude=np.array([0, 3]))
    assert none.size == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_public_nodes_keep_every_cluster_within_delta(seed):
    rng = np.random.default_rng(seed)
    k, n, delta = 4, 60, 0.09
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    accuracy = rng.uniform(0.4, 0.6, n)
    delays = rng.random((k, n))
    chosen = select_public_nodes(delays, labels, accuracy, gamma=0.2, delta=delta, exclude=np.arange(k))
    assert len(chosen) <= int(0.2 * n) and not set(chosen.tolist()) & set(range(k))
    sums = np.bincount(labels, weights=accuracy, minlength=k)
    sizes = np.bincount(labels, minlength=k).astype(float)
    for p in chosen:
        others = np.arange(k) != labels[p]
        sums, sizes = sums + others * accuracy[p], sizes + others
    if len(chosen):
        assert np.all(np.abs(sums / sizes - accuracy.mean()) < delta)


def test_kma_scales_without_a_full_delay_matrix():
    """A 2,000-device KMA (K = 20) on random_geometric; the 10,000-device number is in
    benchmarks/bench_tree_build.py. Prints its time rather than asserting it."""
    net = _network("random_geometric", 2000, 0)
    accuracy = np.random.default_rng(0).uniform(0.3, 0.9, 2000)
    start = time.perf_counter()
    found = kma_clusters(net, accuracy, 20, max_iterations=20, rng=np.random.default_rng(0))
    print(f"KMA 2000 devices, K=20: {time.perf_counter() - start:.2f} s, {found.iterations} iterations")
    assert np.bincount(found.labels, minlength=20).min() >= 1


def _reference_kma(net, accuracy, k, delta, max_iterations, seed):
    """Algorithm 1 run naively to the cap: no cycle shortcut, no medoid memo, full delay rows."""
    oracle = DelayOracle(net.graph)
    n = len(accuracy)
    centres = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    for _ in range(max_iterations):
        rows = oracle.rows(centres)[:, :n]
        labels, _ = kma_assignment(rows, centres, accuracy, delta, k // 2)
        new = np.array([delay_medoid(net, np.flatnonzero(labels == c)) for c in range(k)])
        if np.array_equal(new, centres):
            break
        centres = new
    return labels, new


@pytest.mark.parametrize("seed", [1, 3])
def test_cycling_kma_gives_the_same_result_as_running_to_the_cap(seed):
    net = _network("random_geometric", 120, seed)  # these seeds cycle rather than converge
    accuracy = np.random.default_rng(seed).uniform(0.2, 0.9, 120)
    for cap in (1, 2, 9, 30, 47):
        found = kma_clusters(net, accuracy, 20, delta=0.05, max_iterations=cap, rng=np.random.default_rng(seed))
        labels, centres = _reference_kma(net, accuracy, 20, 0.05, cap, seed)
        assert np.array_equal(found.labels, labels) and np.array_equal(found.centres, centres)
        assert found.iterations == cap and not found.converged
