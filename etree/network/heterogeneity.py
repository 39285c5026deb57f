"""Device heterogeneity: compute speeds and link bandwidths drawn per device, or read from a trace.

Applied once per run, at the boundary (the runner), to a copy of the topology
graph, so every protocol of the run sees the same fleet and the written
``topology.graphml`` holds the values drawn. ``compute_flops`` is drawn per
device; ``bandwidth_bps`` per link touching a device (an edge server's
backbone and cloud links keep the topology's). A trace CSV (columns
``device`` and either or both of ``compute_flops`` and ``bandwidth_bps``)
overrides the draws for the devices it lists; a link between two traced
devices takes the smaller bandwidth.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import networkx as nx
import numpy as np

from etree.core.errors import ProtocolError
from etree.network.conditions import NetworkConditions

TRACE_COLUMNS = ("device", "compute_flops", "bandwidth_bps")


def read_trace(path: str | Path, devices: int) -> dict[str, dict[int, float]]:
    """``{column: {device: value}}`` from a trace CSV; bad rows fail naming ``network.trace``."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"network.trace: file '{path}' not found")
    out: dict[str, dict[int, float]] = {"compute_flops": {}, "bandwidth_bps": {}}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"network.trace: '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "device" not in columns or not set(columns) & set(out) or set(columns) - set(TRACE_COLUMNS):
            raise ProtocolError(
                f"network.trace: '{path}' has columns {columns}; need 'device' and compute_flops and/or bandwidth_bps"
            )
        for line, row in enumerate(reader, start=2):
            try:
                device = int(row["device"])
                values = {k: float(row[k]) for k in out if row.get(k) not in (None, "")}
            except ValueError as exc:
                raise ProtocolError(f"network.trace: '{path}' line {line}: {exc}") from exc
            if not 0 <= device < devices:
                raise ProtocolError(f"network.trace: '{path}' line {line}: device {device} not in 0..{devices - 1}")
            for key, value in values.items():
                if not 0 < value < np.inf:
                    raise ProtocolError(f"network.trace: '{path}' line {line}: {key} {value} must be finite and > 0")
                out[key][device] = value
    return out


def apply_heterogeneity(graph: nx.Graph, devices: int, conditions: NetworkConditions, seed: int) -> nx.Graph:
    """A copy of ``graph`` with per-device compute speeds and device-link bandwidths drawn (seeded)."""
    if not conditions.heterogeneous:
        return graph
    graph = graph.copy()
    compute_seq, bandwidth_seq = np.random.SeedSequence(seed).spawn(2)
    flops = np.array([graph.nodes[d]["compute_flops"] for d in range(devices)], dtype=np.float64)
    links = [(u, v) for u, v in graph.edges() if min(u, v) < devices]
    base = np.array([graph.edges[u, v]["bandwidth_bps"] for u, v in links], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by name
        flops = conditions.compute_flops.draw(np.random.default_rng(compute_seq), flops)
        bandwidth = conditions.bandwidth_bps.draw(np.random.default_rng(bandwidth_seq), base)
    for name, drawn in (("compute_flops", flops), ("bandwidth_bps", bandwidth)):
        if not np.isfinite(drawn).all():  # e.g. a lognormal sigma so wide that exp() overflows
            raise ProtocolError(
                f"network.{name}: its {getattr(conditions, name).kind} distribution draws values that are not "
                "finite numbers; narrow it (a smaller sigma or high)"
            )
    if conditions.trace:
        trace = read_trace(conditions.trace, devices)
        for device, value in trace["compute_flops"].items():
            flops[device] = value
        traced = trace["bandwidth_bps"]
        for i, (u, v) in enumerate(links):
            caps = [traced[n] for n in (u, v) if n in traced]
            if caps:
                bandwidth[i] = min(caps)
    for d in range(devices):
        graph.nodes[d]["compute_flops"] = float(flops[d])
    for (u, v), value in zip(links, bandwidth.tolist(), strict=True):
        graph.edges[u, v]["bandwidth_bps"] = float(value)
    return graph
