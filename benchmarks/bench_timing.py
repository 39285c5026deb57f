"""Wall-clock cost of simulated network time: the same E-Tree run with timing off and on.

Workload: a 1,000-device ``edge_cloud`` fleet, LEAF synthetic (50 samples each), softmax regression,
per-sample SGD, E-Tree (groups [8, 1], ratios [1, 5]), 50 rounds. "off" is
``[network] timing = false`` (no clock, bytes still counted); "on" is the
default ideal network; "faults" adds contention, 10% dropout, a round
deadline, lognormal compute speeds and a head then root crash. The
acceptance bound (issue 5) is on/off and faults/off <= 2. Setup (tree
building, pre-training) is the same for all three and timed apart.

Run: ``.venv/bin/python benchmarks/bench_timing.py [--devices 1000] [--rounds 50]``
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from etree.engine.loop import run_protocol
from etree.protocols import make_protocol
from etree.trees.timing import TreeTiming
from experiments.runner import build_workload
from experiments.spec import spec_from_dict

NETWORKS = {
    "off": {"timing": False},
    "on": {},
    "faults": {
        "contention": True,
        "dropout": 0.1,
        "deadline_s": 5.0,
        "compute_flops": {"kind": "lognormal", "median": 1e9, "sigma": 0.5},
        "crash": [{"at_s": 2.0, "node": "head"}, {"at_s": 4.0, "node": "root"}],
    },
}


TIMING_S = [0.0]  # wall seconds spent inside TreeTiming.run_round (the simulated network alone)
_run_round = TreeTiming.run_round


def _counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        return _run_round(self, *args, **kwargs)
    finally:
        TIMING_S[0] += time.perf_counter() - start


TreeTiming.run_round = _counted  # type: ignore[method-assign]


def timed_run(devices: int, rounds: int, network: dict) -> tuple[float, float, float, int, float]:
    """(setup s, round-loop s, final sim time, crash rows, s inside the timing engine) of one E-Tree run."""
    TIMING_S[0] = 0.0
    spec = spec_from_dict(
        {
            "name": "bench_timing",
            "seed": 0,
            "rounds": rounds,
            "eval_every": rounds,
            "topology": {"kind": "edge_cloud", "devices": devices},
            "data": {"dataset": "synthetic", "partition": "natural"},
            "network": network,
            "protocols": [{"name": "etree", "groups": [8, 1], "ratios": [1, 5]}],
        }
    )
    workload, _, _ = build_workload(spec)
    protocol = make_protocol("etree", "etree", dict(spec.protocols[0].options))
    start = time.perf_counter()
    records = run_protocol(protocol, workload, rounds=rounds, eval_every=rounds)
    first = next(records)  # setup + the round-0 evaluation
    setup = time.perf_counter() - start
    rest = list(records)
    loop = time.perf_counter() - start - setup
    crashes = sum(r.metric == "crash" for r in rest)
    return setup, loop, max(first.sim_time_s, *(r.sim_time_s for r in rest)), crashes, TIMING_S[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    timed_run(50, 2, {})  # warm-up: imports, dataset cache, torch kernels
    results = {name: timed_run(args.devices, args.rounds, network) for name, network in NETWORKS.items()}
    table = Table(title=f"E-Tree, {args.devices} devices (edge_cloud), {args.rounds} rounds: wall time by timing mode")
    columns = ("network", "setup (s)", "rounds (s)", "in timing (s)", "total (s)", "rounds / off", "total / off")
    for column in (*columns, "sim time (s)"):
        table.add_column(column, justify="right")
    off_loop, off_total = results["off"][1], sum(results["off"][:2])
    for name, (setup, loop, sim, crashes, engine) in results.items():
        table.add_row(
            name + (f" ({crashes} crashes)" if crashes else ""),
            f"{setup:.2f}",
            f"{loop:.2f}",
            f"{engine:.2f}",
            f"{setup + loop:.2f}",
            f"{loop / off_loop:.2f}x",
            f"{(setup + loop) / off_total:.2f}x",
            f"{sim:.3g}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
