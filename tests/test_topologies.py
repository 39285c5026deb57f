"""Invariants of the topology generators, loaders and delay functions, over several seeds."""

import itertools
import math
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest

from topologies import (
    TOPOLOGIES,
    TopologyError,
    build_topology,
    connectivity_radius,
    delay_matrix,
    delays_from,
    latency_csgraph,
    path_bottleneck_bandwidth,
    register_topology,
    topology_options,
    write_graphml,
)
from topologies.geometric import random_geometric

GENERATED = [
    "barabasi_albert",
    "edge_cloud",
    "grid_2d",
    "random_geometric",
    "random_links",
    "waxman",
]
LOADERS = ["edgelist", "graphml"]
DETERMINISTIC = {"grid_2d"}  # no randomness: the seed changes nothing
SEEDS = [0, 1, 7]


def assert_contract(graph: nx.Graph, kind: str, devices: int) -> None:
    """The graph contract every topology meets (topologies/__init__.py)."""
    n = graph.number_of_nodes()
    assert type(graph) is nx.Graph
    assert list(graph.nodes) == list(range(n))
    assert nx.is_connected(graph)
    assert graph.graph["kind"] == kind
    assert graph.graph["devices"] == devices
    for node, data in graph.nodes(data=True):
        assert data["role"] == "device" if node < devices else data["role"] in {"edge", "cloud"}
        x, y = data["pos"]
        assert type(x) is float and type(y) is float
        assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
        assert type(data["compute_flops"]) is float and data["compute_flops"] > 0
    for u, v, data in graph.edges(data=True):
        assert u != v
        for name in ("latency_s", "bandwidth_bps"):
            assert type(data[name]) is float
            assert math.isfinite(data[name]) and data[name] > 0


def signature(graph: nx.Graph) -> tuple[Any, ...]:
    """Everything that makes two graphs identical, node and edge order included."""
    return (
        dict(graph.graph),
        list(graph.nodes(data=True)),
        [(u, v, sorted(d.items())) for u, v, d in sorted(graph.edges(data=True))],
        list(graph.edges),
    )


def test_registry_holds_every_generator() -> None:
    assert sorted(TOPOLOGIES) == sorted(GENERATED + LOADERS)


@pytest.mark.parametrize("kind", GENERATED)
@pytest.mark.parametrize("devices", [25, 60, 150])
@pytest.mark.parametrize("seed", SEEDS)
def test_generated_graphs_meet_contract(kind: str, devices: int, seed: int) -> None:
    assert_contract(build_topology(kind, devices, seed=seed), kind, devices)


@pytest.mark.parametrize("kind", ["edge_cloud", "grid_2d", "random_geometric", "random_links"])
@pytest.mark.parametrize("devices", [1, 2, 3, 7])
def test_tiny_fleets_meet_contract(kind: str, devices: int) -> None:
    for seed in SEEDS:
        assert_contract(build_topology(kind, devices, seed=seed), kind, devices)


@pytest.mark.parametrize("kind", GENERATED)
def test_same_seed_same_graph_other_seed_other_graph(kind: str) -> None:
    first = build_topology(kind, 40, seed=11)
    assert signature(first) == signature(build_topology(kind, 40, seed=11))
    if kind not in DETERMINISTIC:
        assert signature(first) != signature(build_topology(kind, 40, seed=12))


def test_random_geometric_links_exactly_the_pairs_within_radius() -> None:
    radius = 0.2
    for seed in SEEDS:
        graph = build_topology("random_geometric", 80, seed=seed, radius=radius)
        for u, v in itertools.combinations(graph, 2):
            close = math.dist(graph.nodes[u]["pos"], graph.nodes[v]["pos"]) <= radius
            assert graph.has_edge(u, v) == close


def test_geometric_latency_follows_distance() -> None:
    graph = build_topology("random_geometric", 50, seed=3, base_latency_s=0.002, latency_per_unit_s=0.1)
    for u, v, data in graph.edges(data=True):
        expected = 0.002 + 0.1 * math.dist(graph.nodes[u]["pos"], graph.nodes[v]["pos"])
        assert data["latency_s"] == pytest.approx(expected)


def test_connectivity_radius_shrinks_with_fleet() -> None:
    radii = [connectivity_radius(n) for n in (10, 100, 1000, 100_000)]
    assert radii == sorted(radii, reverse=True)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("devices", [3, 10, 100])
def test_random_links_has_exact_link_count_and_ms_latencies(devices: int, seed: int) -> None:
    graph = build_topology("random_links", devices, seed=seed)
    assert graph.number_of_edges() == min(3 * devices, devices * (devices - 1) // 2)
    for _, _, data in graph.edges(data=True):
        ms = data["latency_s"] * 1000
        assert 1 <= ms <= 100
        assert ms == pytest.approx(round(ms))


def test_random_links_honours_links_and_latency_range() -> None:
    graph = build_topology("random_links", 50, seed=2, links=70, min_latency_ms=5, max_latency_ms=9)
    assert graph.number_of_edges() == 70
    ms = {round(d * 1000) for _, _, d in graph.edges(data="latency_s")}
    assert ms <= set(range(5, 10)) and len(ms) > 1
    assert build_topology("random_links", 6, seed=0, links=15).number_of_edges() == 15
    assert build_topology("random_links", 6, seed=0, links=5).number_of_edges() == 5


def test_random_links_in_a_huge_pair_space_draws_distinct_links() -> None:
    # 3000 devices hold 4.5 million pairs: extra links come from rejection batches.
    graph = build_topology("random_links", 3000, seed=0, links=7000)
    assert graph.number_of_edges() == 7000
    assert nx.is_connected(graph)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("devices", "options"),
    [(100, {}), (60, {"edge_servers": 4}), (90, {"backbone": "mesh", "mesh_k": 2})],
)
def test_edge_cloud_hierarchy(devices: int, options: dict[str, Any], seed: int) -> None:
    graph = build_topology("edge_cloud", devices, seed=seed, **options)
    servers = options.get("edge_servers", max(1, devices // 20))
    roles = [role for _, role in graph.nodes(data="role")]
    assert roles == ["device"] * devices + ["edge"] * servers + ["cloud"]
    cloud = devices + servers
    for device in range(devices):
        neighbours = list(graph[device])
        assert len(neighbours) == 1
        assert graph.nodes[neighbours[0]]["role"] == "edge"
    for server in range(devices, cloud):
        assert graph.has_edge(server, cloud)
    access = [graph.edges[d, next(iter(graph[d]))]["bandwidth_bps"] for d in range(devices)]
    backbone = [graph.edges[s, cloud]["bandwidth_bps"] for s in range(devices, cloud)]
    assert max(access) < min(backbone)
    flops = [f for _, f in graph.nodes(data="compute_flops")]
    assert max(flops[:devices]) < min(flops[devices:])


def test_edge_cloud_ring_links_every_server_to_two_others() -> None:
    graph = build_topology("edge_cloud", 200, seed=4)
    ring = graph.subgraph(range(200, 210))
    assert all(degree == 2 for _, degree in ring.degree)
    assert nx.is_connected(ring)


@pytest.mark.parametrize("devices", range(1, 30))
def test_grid_holds_exactly_the_devices(devices: int) -> None:
    graph = build_topology("grid_2d", devices, seed=0)
    assert graph.number_of_nodes() == devices
    assert nx.is_connected(graph)
    assert max((d for _, d in graph.degree), default=0) <= 4
    assert len({pos for _, pos in graph.nodes(data="pos")}) == devices


def small_graph(seed: int) -> nx.Graph:
    """A geometric graph with distinct random bandwidths, so paths and bottlenecks vary."""
    graph = build_topology("random_geometric", 40, seed=seed)
    rng = np.random.default_rng(seed)
    for (u, v), bw in zip(graph.edges, rng.uniform(1e6, 1e9, graph.number_of_edges()), strict=True):
        graph.edges[u, v]["bandwidth_bps"] = float(bw)
    return graph


@pytest.mark.parametrize("seed", SEEDS)
def test_delay_matrix_matches_networkx_dijkstra(seed: int) -> None:
    graph = small_graph(seed)
    delays = delay_matrix(graph)
    assert delays.dtype == np.float64
    expected = dict(nx.all_pairs_dijkstra_path_length(graph, weight="latency_s"))
    for u, row in expected.items():
        for v, length in row.items():
            assert delays[u, v] == pytest.approx(length)
    np.testing.assert_allclose(delays, delays.T)
    assert np.all(np.diag(delays) == 0)
    through = delays[:, :, None] + delays[None, :, :]  # i -> j -> k
    assert np.all(delays[:, None, :] <= through + 1e-12)


def test_delay_matrix_of_a_subset_is_the_submatrix() -> None:
    graph = build_topology("edge_cloud", 60, seed=5)
    full = delay_matrix(graph)
    nodes = [3, 60, 0, 62, 3]
    np.testing.assert_array_equal(delay_matrix(graph, nodes), full[np.ix_(nodes, nodes)])


@pytest.mark.parametrize("kind", GENERATED)
def test_delays_from_rows_equal_delay_matrix_rows(kind: str) -> None:
    graph = build_topology(kind, 50, seed=2)
    sources = [0, 17, 49, 17]
    rows = delays_from(graph, sources)
    assert rows.shape == (4, graph.number_of_nodes())
    np.testing.assert_array_equal(rows, delay_matrix(graph)[sources])
    assert delays_from(graph, []).shape == (0, graph.number_of_nodes())


def brute_force_bottleneck(graph: nx.Graph, source: int) -> list[float]:
    result = []
    for target in graph:
        path = nx.dijkstra_path(graph, source, target, weight="latency_s")
        hops = itertools.pairwise(path)
        result.append(min((graph.edges[a, b]["bandwidth_bps"] for a, b in hops), default=math.inf))
    return result


@pytest.mark.parametrize("seed", SEEDS)
def test_path_bottleneck_bandwidth_matches_walking_dijkstra_paths(seed: int) -> None:
    for graph in (small_graph(seed), build_topology("edge_cloud", 50, seed=seed)):
        sources = [0, 5, graph.number_of_nodes() - 1]
        got = path_bottleneck_bandwidth(graph, sources)
        assert got.shape == (3, graph.number_of_nodes())
        for row, source in zip(got, sources, strict=True):
            assert row[source] == math.inf
            np.testing.assert_array_equal(row, brute_force_bottleneck(graph, source))


def test_latency_csgraph_is_symmetric_latency_matrix() -> None:
    graph = small_graph(0)
    matrix = latency_csgraph(graph)
    expected = nx.to_scipy_sparse_array(graph, nodelist=range(40), weight="latency_s")
    assert (matrix != expected).nnz == 0
    assert (matrix != matrix.T).nnz == 0


def test_delay_functions_refuse_foreign_graphs() -> None:
    with pytest.raises(TopologyError, match=r"graph\.nodes"):
        delay_matrix(nx.relabel_nodes(small_graph(0), str))
    with pytest.raises(TopologyError, match=r"graph\.edges: a link lacks attribute 'latency_s'"):
        delays_from(nx.path_graph(3), [0])
    with pytest.raises(TopologyError, match="DiGraph is not allowed"):
        delays_from(nx.DiGraph(small_graph(0)), [0])
    with pytest.raises(TopologyError, match="sources"):
        delays_from(small_graph(0), [40])


@pytest.mark.parametrize(("kind", "name"), [("edge_cloud", "topology.graphml"), ("random_geometric", "t.graphml.gz")])
def test_graphml_round_trip_preserves_nodes_edges_and_attributes(kind: str, name: str, tmp_path: Path) -> None:
    graph = build_topology(kind, 30, seed=9)
    path = tmp_path / name  # large run folders store it gzipped
    write_graphml(graph, path)
    loaded = build_topology("graphml", 30, seed=0, path=str(path))
    assert_contract(loaded, "graphml", 30)
    assert list(loaded.nodes(data=True)) == list(graph.nodes(data=True))
    assert sorted(loaded.edges(data=True)) == sorted(graph.edges(data=True))


def test_graphml_fills_missing_attributes(tmp_path: Path) -> None:
    bare = nx.Graph([("10", "2"), ("2", "1"), ("1", "10")])
    bare.edges["2", "1"]["latency_s"] = 0.5
    path = tmp_path / "bare.graphml"
    nx.write_graphml(bare, path)
    loaded = build_topology("graphml", 3, seed=4, path=path)
    assert_contract(loaded, "graphml", 3)
    assert loaded.edges[0, 1]["latency_s"] == 0.5  # "1" -> 0, "2" -> 1: natural order
    assert loaded.edges[0, 2]["bandwidth_bps"] == 1e8


def test_graphml_puts_devices_first_and_scales_positions_into_the_square(
    tmp_path: Path,
) -> None:
    raw = nx.Graph()
    raw.add_node("srv", role="edge", pos_x=10.0, pos_y=20.0)
    raw.add_node("d2", role="device", pos_x=14.0, pos_y=20.0)
    raw.add_node("d1", pos_x=10.0, pos_y=22.0)  # no role: a device
    raw.add_edges_from([("srv", "d1"), ("srv", "d2")])
    path = tmp_path / "roles.graphml"
    nx.write_graphml(raw, path)
    graph = build_topology("graphml", 2, seed=0, path=path)
    assert_contract(graph, "graphml", 2)
    assert [role for _, role in graph.nodes(data="role")] == ["device", "device", "edge"]
    assert [pos for _, pos in graph.nodes(data="pos")] == [(0.0, 0.5), (1.0, 0.0), (0.0, 0.0)]
    assert sorted(graph.edges) == [(0, 2), (1, 2)]


def test_edgelist_loads_attributes_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "net.txt"
    path.write_text("# u v latency_s bandwidth_bps\n1 2 0.010 5e7\n2 10 0.020   # no bandwidth given\n\n10 1\n")
    graph = build_topology("edgelist", 3, seed=1, path=str(path))
    assert_contract(graph, "edgelist", 3)
    assert graph.edges[0, 1] == {"latency_s": 0.010, "bandwidth_bps": 5e7}
    assert graph.edges[1, 2] == {"latency_s": 0.020, "bandwidth_bps": 1e8}
    assert graph.edges[0, 2]["latency_s"] > 0
    assert signature(graph) == signature(build_topology("edgelist", 3, seed=1, path=path))


def error_cases(tmp_path: Path) -> list[tuple[Any, Any, dict[str, Any], str]]:
    disconnected = tmp_path / "two_parts.txt"
    disconnected.write_text("0 1\n2 3\n")
    bad_line = tmp_path / "bad_line.txt"
    bad_line.write_text("0 1 0.1 1e6 extra\n")
    bad_latency = tmp_path / "bad_latency.txt"
    bad_latency.write_text("0 1 -0.1\n")
    triangle = tmp_path / "triangle.txt"
    triangle.write_text("0 1\n1 2\n2 0\n")
    missing = str(tmp_path / "nowhere.graphml")
    return [
        ("foo", 10, {}, "topology.kind: unknown 'foo'; choose one of: barabasi_albert, edge_cloud"),
        (3, 10, {}, "topology.kind"),
        ("grid_2d", 0, {}, "topology.devices: 0"),
        ("grid_2d", -3, {}, "topology.devices: -3"),
        ("grid_2d", True, {}, "topology.devices: True"),
        ("grid_2d", "x", {}, "topology.devices: 'x'"),
        ("grid_2d", 2.5, {}, "topology.devices: 2.5"),
        ("grid_2d", 10, {"colour": 1}, "topology.colour: unknown option 'colour' for 'grid_2d'"),
        ("random_geometric", 10, {"radius": -0.5}, "topology.radius: -0.5"),
        ("random_geometric", 10, {"radius": True}, "topology.radius: True"),
        ("random_geometric", 10, {"radius": math.nan}, "topology.radius: nan"),
        ("random_geometric", 10, {"base_latency_s": -1e-3}, "topology.base_latency_s"),
        ("random_geometric", 200, {"radius": 0.001}, "raise topology.radius"),
        ("random_links", 10, {"min_latency_ms": -1}, "topology.min_latency_ms: -1"),
        ("random_links", 10, {"min_latency_ms": 9, "max_latency_ms": 3}, "topology.max_latency_ms"),
        ("random_links", 10, {"links": 5}, "topology.links: 5"),
        ("random_links", 10, {"links": 46}, "topology.links: 46"),
        ("edge_cloud", 10, {"backbone": "star"}, "topology.backbone: unknown 'star'"),
        ("edge_cloud", 10, {"cloud_latency_s": 0}, "topology.cloud_latency_s: 0"),
        ("edge_cloud", 10, {"edge_servers": 1.5}, "topology.edge_servers: 1.5"),
        ("barabasi_albert", 3, {"m": 3}, "topology.m: 3"),
        ("waxman", 10, {"beta": 1.5}, "topology.beta: 1.5"),
        ("waxman", 50, {"alpha": 1e-4, "beta": 1e-3}, "topology.alpha"),
        ("graphml", 10, {}, "topology.path: required"),
        ("graphml", 10, {"path": missing}, f"topology.path: file {missing!r} not found"),
        ("edgelist", 4, {"path": str(disconnected)}, "topology.path: graph in"),
        ("edgelist", 2, {"path": str(bad_line)}, "topology.path: line 1"),
        ("edgelist", 2, {"path": str(bad_latency)}, "topology.path: line 1"),
        ("edgelist", 5, {"path": str(triangle)}, "topology.devices: 5 does not match"),
    ]


def test_every_bad_input_raises_topology_error_naming_the_field(tmp_path: Path) -> None:
    for kind, devices, options, message in error_cases(tmp_path):
        with pytest.raises(TopologyError) as caught:
            build_topology(kind, devices, seed=0, **options)
        text = str(caught.value)
        assert message in text, (kind, devices, options, text)
        assert "\n" not in text


@pytest.mark.parametrize("seed", [-1, 1.5, "a", None])
def test_bad_seed_is_refused(seed: Any) -> None:
    with pytest.raises(TopologyError, match=r"topology\.seed"):
        build_topology("grid_2d", 4, seed=seed)


def test_generators_validate_when_called_directly() -> None:
    with pytest.raises(TopologyError, match=r"topology\.devices"):
        random_geometric(0, seed=1)
    with pytest.raises(TopologyError, match=r"topology\.radius"):
        random_geometric(10, seed=1, radius=-1.0)


def test_topology_error_is_a_value_error() -> None:
    assert issubclass(TopologyError, ValueError)


def test_register_topology_refuses_a_duplicate_name() -> None:
    @register_topology("test_only_single")
    def single(devices: int, *, seed: int, size: float = 1.0) -> nx.Graph:
        return nx.Graph()

    try:
        assert TOPOLOGIES["test_only_single"] is single
        assert list(topology_options("test_only_single")) == ["size"]
        with pytest.raises(TopologyError, match="already registered"):
            register_topology("test_only_single")(single)
        with pytest.raises(TopologyError, match="already registered"):
            register_topology("grid_2d")(single)
    finally:
        del TOPOLOGIES["test_only_single"]


def test_scale_smoke_twenty_thousand_devices() -> None:
    graph = build_topology("random_geometric", 20_000, seed=0)
    assert graph.number_of_nodes() == 20_000
    sources = list(range(0, 20_000, 2_500))
    delays = delays_from(graph, sources)
    assert delays.shape == (8, 20_000)
    assert np.all(np.isfinite(delays))
    bottleneck = path_bottleneck_bandwidth(graph, sources)
    assert bottleneck.shape == (8, 20_000)
