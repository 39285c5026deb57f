"""Show an aggregation tree: a text outline and a drawing over the topology.

Works from the JSON-ready structure a protocol returns (``tree.json``) and the
graph's node positions, so the same code draws a fresh tree or a saved run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
from matplotlib.collections import LineCollection
from rich.tree import Tree

from experiments.plots import save_figure

MAX_LISTED = 12
MAX_DRAWN_LINKS = 100_000  # above this the network's links are left out of a drawing (grey wash, seconds to render)


def outline(structure: dict[str, Any], label: str) -> Tree:
    """A rich tree: root, then each layer's heads with member counts (long lists elided)."""
    layers = structure["layers"]
    root = Tree(
        f"[bold]{label}[/]: root device {structure['root']}, {structure['depth']} aggregation layer(s), "
        f"{structure['devices']} devices, {len(structure.get('public_nodes', []))} public node(s)"
    )

    def add(branch: Tree, level: int, head: int) -> None:
        clusters = {c["head"]: c["members"] for c in layers[level]["clusters"]}
        members = clusters[head]
        if level == 0:
            shown = ", ".join(map(str, members[:MAX_LISTED])) + (" ..." if len(members) > MAX_LISTED else "")
            branch.add(f"head {head}: {len(members)} devices [{shown}]")
            return
        node = branch.add(f"layer-{level + 1} head {head}: {len(members)} children")
        for child in members:
            add(node, level - 1, child)

    add(root, len(layers) - 1, structure["root"])
    return root


def draw_tree(graph: nx.Graph, structure: dict[str, Any], path: Path, *, title: str) -> Path:
    """Devices coloured by cluster, member-to-head links, heads (triangles) and the root (star).

    The network's own links are drawn in light grey up to ``MAX_DRAWN_LINKS`` links; a larger
    network (a 100,000-device random geometric graph has 1.1 million) would only grey the picture
    over, so the title says they are left out. Segments go to matplotlib as one array each.
    """
    pos = np.array([graph.nodes[n]["pos"] for n in range(graph.number_of_nodes())], dtype=float)
    layers = structure["layers"]
    devices = structure["devices"]
    cluster_of = np.zeros(devices, dtype=int)
    figure, ax = plt.subplots(figsize=(8, 8), constrained_layout=True)
    colours = plt.get_cmap("tab20")
    small = devices > 300
    if graph.number_of_edges() <= MAX_DRAWN_LINKS:
        links = np.array(graph.edges(), dtype=np.int64).reshape(-1, 2)
        ax.add_collection(LineCollection(list(pos[links]), colors="0.85", linewidths=0.3 if small else 0.6, zorder=0))
    else:
        title = f"{title} ({graph.number_of_edges():,} network links not drawn)"
    for k, cluster in enumerate(layers[0]["clusters"]):
        members = np.array(cluster["members"], dtype=np.int64)
        cluster_of[members] = k
        spokes = _spokes(pos, members, cluster["head"])
        ax.add_collection(LineCollection(list(spokes), colors=[colours(k % 20)], linewidths=0.5, alpha=0.6, zorder=1))
    ax.scatter(
        pos[:devices, 0],
        pos[:devices, 1],
        c=colours(cluster_of % 20),
        s=6 if small else 22,
        zorder=2,
        linewidths=0,
    )
    for level, layer in enumerate(layers[1:], start=1):
        for cluster in layer["clusters"]:
            spokes = _spokes(pos, np.array(cluster["members"], dtype=np.int64), cluster["head"])
            ax.add_collection(LineCollection(list(spokes), colors="k", linewidths=1.0 + level, zorder=3))
    heads = np.array([c["head"] for c in layers[0]["clusters"]])
    ax.scatter(
        pos[heads, 0], pos[heads, 1], marker="^", s=90, c="white", edgecolors="k", zorder=4, label="cluster head"
    )
    public = np.array(structure.get("public_nodes", []), dtype=int)
    if len(public):
        ax.scatter(
            pos[public, 0], pos[public, 1], s=60, facecolors="none", edgecolors="k", zorder=4, label="public node"
        )
    root = structure["root"]
    ax.scatter([pos[root, 0]], [pos[root, 1]], marker="*", s=350, c="gold", edgecolors="k", zorder=5, label="root")
    others = np.array([n for n in range(devices, len(pos))], dtype=int)
    if len(others):
        ax.scatter(pos[others, 0], pos[others, 1], marker="s", s=30, c="0.4", zorder=2, label="infrastructure")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.autoscale()
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(figure, path)


def _spokes(pos: np.ndarray, members: np.ndarray, head: int) -> np.ndarray:
    """``[m, 2, 2]`` segments from each member other than ``head`` to ``head``."""
    others = members[members != head]
    return np.stack([pos[others], np.broadcast_to(pos[head], (len(others), 2))], axis=1)
