"""One federated MF round on MovieLens-100K (943 user-devices): whole item tables against sparse rows.

Both runs are the product's code path (``TreeProtocol.run_round`` on the workload of
``experiments/movielens.toml``), in the same process, after one warm-up round each:
``item_merge = "dense"`` (every device trains, sends and averages its whole item
table: the engine before sparse rows) against ``"touched"`` (each device trains and
sends only the rows of its interactions and sampled negatives, averaged per item over
their senders; ``etree.trees.sparse_rows``). Wall and CPU seconds of one round (the
median of ``--rounds``), bytes of that round, and their ratios.

Run: ``flock /tmp/bench.lock .venv/bin/python benchmarks/bench_recommenders.py [--protocols fedavg etree] [--rounds 3]``
(needs ml-100k offline: ``pip install --no-deps recbole==1.2.1``, which ``make setup`` does).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from etree.engine.loop import prepare_protocol
from etree.protocols import make_protocol
from experiments.runner import build_workload, protocol_workload
from experiments.spec import load_spec

SPEC = "experiments/movielens.toml"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(name: str, item_merge: str, rounds: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of a round after the first, and the bytes of the last one timed."""
    spec = load_spec(SPEC, [f"rounds={rounds + 1}"])
    workload, _, _ = build_workload(spec)
    table = next((p for p in spec.protocols if p.name == name), None)  # not in the spec: its defaults
    options = {} if table is None else dict(table.options)
    protocol = make_protocol(name, name, options | {"item_merge": item_merge})
    prepare_protocol(protocol, workload if table is None else protocol_workload(workload, table))
    protocol.run_round(1)  # warm-up: first allocations, lazy imports
    walls, cpus, sent = [], [], 0
    for index in range(2, rounds + 2):
        wall, cpu = time.perf_counter(), cpu_s()
        sent = protocol.run_round(index).bytes_sent
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_s() - cpu)
    return statistics.median(walls), statistics.median(cpus), sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protocols", nargs="+", default=["fedavg"], help="tree protocols (the spec's options if it has them)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per run (the median is shown)")
    args = parser.parse_args()
    table = Table(title=f"One MF round, 943 devices ({torch.get_num_threads()} torch threads)")
    for column in ("protocol", "dense s (cpu)", "touched s (cpu)", "speed-up", "dense MB", "touched MB", "bytes ratio"):
        table.add_column(column, justify="right")
    for name in args.protocols:
        dense_wall, dense_cpu, dense_bytes = one_round(name, "dense", args.rounds)
        wall, cpu, sent = one_round(name, "touched", args.rounds)
        table.add_row(
            name,
            f"{dense_wall:.2f} ({dense_cpu:.2f})",
            f"{wall:.2f} ({cpu:.2f})",
            f"{dense_wall / wall:.1f}x",
            f"{dense_bytes / 1e6:.0f}",
            f"{sent / 1e6:.0f}",
            f"{dense_bytes / sent:.2f}x",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
