"""Wall time of building the E-Tree (KMA + upper k-medoid layers) on large fleets, without an N x N matrix.

Workload: a ``random_geometric`` topology; random pre-training accuracies
(uniform in [0.3, 0.9]: no training, only the structure is timed); KMA with
K = ``--clusters`` (default 100) over the devices, then the upper layers of
``--groups`` (default K, K/10, 1), optionally public nodes (Algorithm 2).
Reports the time of each part, KMA iterations, and the peak resident memory
(an N x N float64 delay matrix alone would be 800 MB at 10,000 devices).

Run: ``.venv/bin/python benchmarks/bench_tree_build.py [--devices 1000 10000] [--clusters 100]``
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from etree.network.model import NetworkModel
from etree.trees.kma_tree import build_etree_tree
from topologies import build_topology


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10000])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--groups", type=int, nargs="+", default=None, help="clusters per layer, last 1")
    parser.add_argument("--max-iterations", type=int, default=100)
    parser.add_argument("--public-nodes", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    groups = args.groups or [args.clusters, max(1, args.clusters // 10), 1]
    table = Table(title=f"E-Tree build on random_geometric, groups {groups}")
    for column in (
        "devices",
        "clustering",
        "topology s",
        "tree build s",
        "layer-0 iterations",
        "converged",
        "public nodes",
        "peak RSS MB",
    ):
        table.add_column(column, justify="right")
    for devices in args.devices:
        start = time.perf_counter()
        graph = build_topology("random_geometric", devices, seed=args.seed)
        topology_s = time.perf_counter() - start
        accuracy = np.random.default_rng(args.seed).uniform(0.3, 0.9, devices)
        for clustering in ("kma", "kmedoids"):
            network = NetworkModel(graph)
            start = time.perf_counter()
            build = build_etree_tree(
                network,
                devices,
                groups,
                accuracy=accuracy,
                clustering=clustering,
                max_iterations=args.max_iterations,
                public_nodes=args.public_nodes,
                rng=np.random.default_rng(args.seed),
            )
            build_s = time.perf_counter() - start
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            first = build.layers[0]
            table.add_row(
                f"{devices:,}",
                clustering,
                f"{topology_s:.1f}",
                f"{build_s:.1f}",
                str(first.iterations),
                str(first.converged),
                str(len(build.tree.public)),
                f"{rss:.0f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
