"""Topologies read from files: graphml and whitespace edge lists.

Loaded graphs meet the same contract as generated ones: nodes are relabelled
``0..n-1`` (devices first, then edge servers, then clouds, each group in
natural order of the file's ids, so ``"2"`` precedes ``"10"``) and missing
attributes get the generators' defaults. Positions missing from the file are
drawn uniformly from ``seed``, and positions outside the unit square (say,
longitude and latitude) are shifted and scaled into it, keeping their shape.
A link without ``latency_s`` gets the geometric latency of its length (our
choice: a file without either carries no notion of distance). Attributes
outside the contract are dropped.
"""

import gzip
import math
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape, quoteattr

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from topologies.attributes import (
    BANDWIDTH_BPS,
    COMPUTE_FLOPS,
    ROLES,
    annotated_graph,
    as_edge_array,
    geometric_latency,
    uniform_positions,
)
from topologies.checks import check_devices, check_seed
from topologies.errors import TopologyError
from topologies.registry import register_topology

PathLike = str | os.PathLike[str]


def _natural_key(node: Hashable) -> tuple[int, int, str]:
    text = str(node)
    try:
        return (0, int(text), "")
    except ValueError:
        return (1, 0, text)


def _number(source: str, where: str, name: str, value: Any) -> float:
    """A positive finite float from a file's attribute, or an error naming where it was."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise TopologyError(
            f"topology.path: {where} in {source!r} has {name} {value!r}; must be a positive finite number"
        )
    return number


def _position(source: str, node: Hashable, data: dict[str, Any]) -> tuple[float, float] | None:
    """A node's position from ``pos`` (a pair) or ``pos_x``/``pos_y``; None if absent."""
    pair = data.get("pos")
    if isinstance(pair, tuple | list) and len(pair) == 2:
        x, y = pair
    elif "pos_x" in data and "pos_y" in data:
        x, y = data["pos_x"], data["pos_y"]
    else:
        return None
    try:
        point = (float(x), float(y))
    except (TypeError, ValueError):
        point = (math.nan, math.nan)
    if not all(math.isfinite(c) for c in point):
        raise TopologyError(
            f"topology.path: node {node!r} in {source!r} has position ({x!r}, {y!r}); "
            "coordinates must be finite numbers"
        )
    return point


def _into_unit_square(positions: NDArray[np.float64]) -> NDArray[np.float64]:
    """Shift and scale (one factor, so shapes keep) into the unit square if a point is outside."""
    if positions.size == 0 or (positions.min() >= 0 and positions.max() <= 1):
        return positions
    low = positions.min(axis=0)
    span = float((positions.max(axis=0) - low).max()) or 1.0
    return np.asarray((positions - low) / span, dtype=np.float64)


def _check_shape(raw: nx.Graph, source: str) -> None:
    if raw.number_of_nodes() == 0:
        raise TopologyError(f"topology.path: file {source!r} holds no nodes; need a connected graph")
    loops = list(nx.selfloop_edges(raw))
    if loops:
        raise TopologyError(
            f"topology.path: file {source!r} has a self-loop at node {loops[0][0]!r}; "
            "links must join two different nodes"
        )
    parts = nx.number_connected_components(raw)
    if parts > 1:
        raise TopologyError(
            f"topology.path: graph in {source!r} has {parts} connected components; the topology must be connected"
        )


def annotate_loaded(raw: nx.Graph, kind: str, devices: int, *, seed: int, source: str) -> nx.Graph:
    """Relabel a loaded graph to the contract and fill missing attributes with defaults."""
    _check_shape(raw, source)
    roles = {node: data.get("role", "device") for node, data in raw.nodes(data=True)}
    for node, role in roles.items():
        if role not in ROLES:
            raise TopologyError(
                f"topology.path: node {node!r} in {source!r} has role {role!r}; "
                f"choose one of: {', '.join(sorted(ROLES))}"
            )
    order = sorted(raw.nodes, key=lambda node: (ROLES.index(roles[node]), _natural_key(node)))
    held = sum(role == "device" for role in roles.values())
    if devices != held:
        raise TopologyError(
            f"topology.devices: {devices!r} does not match {source!r}, which holds {held} "
            f"devices and {len(order) - held} other nodes"
        )
    index = {node: i for i, node in enumerate(order)}

    drawn = uniform_positions(np.random.default_rng(seed), len(order))
    given = [_position(source, node, raw.nodes[node]) for node in order]
    positions = _into_unit_square(
        np.array([g if g is not None else drawn[i] for i, g in enumerate(given)], dtype=np.float64)
    )
    flops = [
        _number(source, f"node {node!r}", "compute_flops", raw.nodes[node].get("compute_flops"))
        if "compute_flops" in raw.nodes[node]
        else COMPUTE_FLOPS
        for node in order
    ]

    edges = as_edge_array([(index[u], index[v]) for u, v in raw.edges()])
    default_latency = geometric_latency(positions, edges)
    latency, bandwidth = [], []
    for i, (u, v, data) in enumerate(raw.edges(data=True)):
        where = f"edge ({u!r}, {v!r})"
        latency.append(
            _number(source, where, "latency_s", data["latency_s"]) if "latency_s" in data else float(default_latency[i])
        )
        bandwidth.append(
            _number(source, where, "bandwidth_bps", data["bandwidth_bps"]) if "bandwidth_bps" in data else BANDWIDTH_BPS
        )
    graph = annotated_graph(kind, devices, positions, edges, latency, bandwidth, flops, [roles[n] for n in order])
    graph.graph["source"] = source
    return graph


def _existing(path: PathLike, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise TopologyError(f"topology.path: file {str(file)!r} not found; give an existing {what}")
    return file


@register_topology("graphml")
def graphml(devices: int, *, seed: int, path: PathLike) -> nx.Graph:
    """A topology stored as graphml, e.g. by :func:`write_graphml` or a topology zoo.

    Node attributes ``pos_x``/``pos_y``, ``compute_flops`` and ``role`` and
    edge attributes ``latency_s`` and ``bandwidth_bps`` are read when present.
    Directed and multi-edge files are read as simple undirected graphs.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    file = _existing(path, "graphml file")
    try:
        raw = nx.read_graphml(file)
    except (ParseError, nx.NetworkXError, ValueError, KeyError) as error:
        raise TopologyError(
            f"topology.path: file {str(file)!r} is not valid graphml ({error}); give a graphml file"
        ) from error
    return annotate_loaded(nx.Graph(raw.to_undirected()), "graphml", devices, seed=seed, source=str(file))


def read_edge_lines(lines: list[str], source: str) -> nx.Graph:
    """Parse ``u v [latency_s [bandwidth_bps]]`` lines; ``#`` starts a comment."""
    raw = nx.Graph()
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if not 2 <= len(fields) <= 4:
            raise TopologyError(
                f"topology.path: line {number} of {source!r} reads {line.strip()!r}; "
                "expected 'u v [latency_s [bandwidth_bps]]'"
            )
        u, v = fields[0], fields[1]
        if raw.has_edge(u, v):
            raise TopologyError(
                f"topology.path: line {number} of {source!r} repeats link ({u!r}, {v!r}); list each link once"
            )
        attrs = dict(zip(("latency_s", "bandwidth_bps"), fields[2:], strict=False))
        where = f"line {number}"
        raw.add_edge(u, v, **{k: _number(source, where, k, val) for k, val in attrs.items()})
    return raw


@register_topology("edgelist")
def edgelist(devices: int, *, seed: int, path: PathLike) -> nx.Graph:
    """A topology stored as lines ``u v [latency_s [bandwidth_bps]]``, all nodes devices.

    The simplest exchange format (what the E-Tree authors' simulator reads);
    missing latency and bandwidth get the defaults.
    """
    devices = check_devices(devices)
    seed = check_seed(seed)
    file = _existing(path, "edge-list file")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise TopologyError(
            f"topology.path: file {str(file)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
            "save the edge list as UTF-8"
        ) from error
    raw = read_edge_lines(text.splitlines(), str(file))
    return annotate_loaded(raw, "edgelist", devices, seed=seed, source=str(file))


def write_graphml(graph: nx.Graph, path: PathLike) -> None:
    """Store a topology as graphml that :func:`graphml` reads back unchanged.

    graphml has no tuple type, so ``pos`` becomes two float attributes
    ``pos_x`` and ``pos_y``; graph attributes that are not scalars are dropped.
    A path ending in ``.gz`` is gzipped at level 1 (a 100,000-node network: 5x
    faster than the default level 9, about 20% larger).

    The XML is the one ``networkx.write_graphml`` writes (same keys, types and
    ``repr`` numbers, so floats read back bit for bit), streamed as text: at
    1.1 million links networkx's element tree took most of a run folder's write time.
    """
    nodes = [(node, _graphml_node_attributes(data)) for node, data in graph.nodes(data=True)]
    scalars = {k: v for k, v in graph.graph.items() if isinstance(v, str | int | float | bool)}
    keys: dict[tuple[str, str], tuple[str, str]] = {}  # (for, name) -> (id, type)

    def key(scope: str, name: str, value: Any) -> str:
        found = keys.get((scope, name))
        if found is None:
            found = keys[(scope, name)] = (f"d{len(keys)}", _graphml_type(value))
        return found[0]

    for name, value in scalars.items():
        key("graph", name, value)
    for _, attrs in nodes:
        for name, value in attrs.items():
            key("node", name, value)
    edges = list(graph.edges(data=True))
    for _, _, attrs in edges:
        for name, value in attrs.items():
            key("edge", name, value)
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    kwargs: dict[str, Any] = {"compresslevel": 1} if opener is gzip.open else {}
    with opener(os.fspath(path), "wt", encoding="utf-8", newline="\n", **kwargs) as out:
        out.write(_GRAPHML_HEAD)
        for (scope, name), (ident, kind) in reversed(keys.items()):  # networkx lists keys newest first
            out.write(f'  <key id="{ident}" for="{scope}" attr.name={quoteattr(name)} attr.type="{kind}" />\n')
        out.write('  <graph edgedefault="undirected">\n')
        chunk: list[str] = []
        for node, attrs in nodes:
            chunk.append(f"    <node id={quoteattr(str(node))}>\n{_graphml_data(keys, 'node', attrs, 6)}    </node>\n")
        for u, v, attrs in edges:
            chunk.append(
                f"    <edge source={quoteattr(str(u))} target={quoteattr(str(v))}>\n"
                f"{_graphml_data(keys, 'edge', attrs, 6)}    </edge>\n"
            )
            if len(chunk) >= 65536:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
        out.write(_graphml_data(keys, "graph", scalars, 4))
        out.write("  </graph>\n</graphml>\n")


_GRAPHML_HEAD = (
    "<?xml version='1.0' encoding='utf-8'?>\n"
    '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
    'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n'
)


def _graphml_node_attributes(data: dict[str, Any]) -> dict[str, Any]:
    attrs = {k: v for k, v in data.items() if k != "pos"}
    if "pos" in data:
        attrs["pos_x"], attrs["pos_y"] = (float(c) for c in data["pos"])
    return attrs


def _graphml_type(value: Any) -> str:
    """The graphml type networkx gives a Python or numpy scalar."""
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | np.integer):
        return "long"
    if isinstance(value, float | np.floating):
        return "double"
    return "string"


def _graphml_text(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return escape(str(value))


def _graphml_data(keys: dict[tuple[str, str], tuple[str, str]], scope: str, attrs: dict[str, Any], indent: int) -> str:
    pad = " " * indent
    return "".join(
        f'{pad}<data key="{keys[(scope, name)][0]}">{_graphml_text(value)}</data>\n' for name, value in attrs.items()
    )
