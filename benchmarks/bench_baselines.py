"""Per-round cost of every non-IID baseline relative to in-engine FedAvg, measured side by side (issue 14.7).

Workload: ``experiments/niid_bench.toml`` as committed (100 devices on ``random_links``, mnist5k,
pathological 2 classes per device, MLP-64, 5 local epochs of batch-10 SGD per round) and its
``[[protocols]]``: FedAvg, FedProx, SCAFFOLD, FedNova, FedAvgM/FedAdam/FedYogi/FedAdagrad,
D-PSGD, IFCA (k = 2), HierFAVG, gossip, E-Tree and E-Tree + FedProx. Only the rounds are cut.

Every protocol is built and set up once (``prepare_protocol``; set-up is timed apart, once), then
stepped one ``run_round`` at a time, interleaved: round r of every method runs before round r + 1
of any, in an order rotated each round so that no method always follows the same one. The first
``--warmup`` rounds are not counted (torch's first kernels, lazy buffers). A method's ratio is the
median over rounds of its time in round r over FedAvg's in round r: the two ran seconds apart, so a
load change on the machine touches both, and the median drops the rounds another job preempted.

Two clocks: wall (``perf_counter``, what the issue's 1.5x target is about) and CPU
(``process_time``, every thread of this process). torch runs on ``--threads`` threads (1 by
default) and the rounds do no I/O, so on an idle machine the two agree; on a shared one waiting
for a core inflates wall time but not CPU time, which is why CPU is reported too and why the
target is judged on both. The target applies to the client-side methods (FedProx, SCAFFOLD,
FedNova: issue 14.1), whose extra cost is in local training.

Run: ``.venv/bin/python benchmarks/bench_baselines.py [--rounds 8] [--warmup 1] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from etree.engine.loop import prepare_protocol
from etree.engine.protocol import Protocol
from etree.engine.workload import Workload
from etree.protocols import make_protocol
from experiments.runner import build_workload, protocol_workload
from experiments.spec import ProtocolSpec, load_spec

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "niid_bench.toml"
REFERENCE = "fedavg"
TARGET = 1.5  # issue 14.7: client-side methods within 1.5x FedAvg's per-round wall time
CLIENT_SIDE = ("scaffold", "fednova")  # protocol names; FedAvg with local = "fedprox" also counts


def _kind(spec: ProtocolSpec) -> str:
    """What a method changes with respect to FedAvg (the table's grouping)."""
    if spec.name in CLIENT_SIDE or (spec.name == "fedavg" and spec.options.get("local") == "fedprox"):
        return "client"
    if spec.name == "fedavg" and spec.options.get("server_opt", "none") != "none":
        return "server"
    return {"fedavg": "reference", "dpsgd": "decentralized", "gossip": "decentralized", "ifca": "clustered"}.get(
        spec.name, "tree"
    )


def _step(protocol: Protocol, workload: Workload, round_index: int) -> tuple[float, float]:
    """(wall s, CPU s) of one round, with the clock advanced as ``run_protocol`` does."""
    wall, cpu = time.perf_counter(), time.process_time()
    cost = protocol.run_round(round_index)
    if not cost.clocked and workload.network.timing:
        protocol.clock.advance(cost.duration_s)
    return time.perf_counter() - wall, time.process_time() - cpu


Times = dict[str, list[tuple[float, float]]]  # label -> (wall s, CPU s) of each measured round


def measure(rounds: int, warmup: int) -> tuple[list[ProtocolSpec], dict[str, float], Times]:
    """Set-up seconds and per-round (wall, CPU) seconds of every protocol of the spec, interleaved."""
    spec = load_spec(SPEC, [f"rounds={rounds + warmup}"])
    workload, _, _ = build_workload(spec)
    labels = [p.label for p in spec.protocols]
    protocols = {p.label: make_protocol(p.name, p.label, dict(p.options)) for p in spec.protocols}
    workloads = {p.label: protocol_workload(workload, p) for p in spec.protocols}
    setup: dict[str, float] = {}
    for label in labels:
        start = time.perf_counter()
        prepare_protocol(protocols[label], workloads[label])
        setup[label] = time.perf_counter() - start
    times: Times = {label: [] for label in labels}
    for round_index in range(1, rounds + warmup + 1):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            taken = _step(protocols[label], workloads[label], round_index)
            if round_index > warmup:
                times[label].append(taken)
    return list(spec.protocols), setup, times


def _ratio(times: list[tuple[float, float]], reference: list[tuple[float, float]], clock: int) -> float:
    """Median over rounds of this method's time over FedAvg's in the same round."""
    return statistics.median(t[clock] / r[clock] for t, r in zip(times, reference, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds per method")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs, setup, times = measure(args.rounds, args.warmup)
    reference = times[REFERENCE]
    table = Table(
        title=f"Per-round cost relative to in-engine FedAvg: niid_bench fleet, median of {args.rounds} interleaved "
        f"rounds after {args.warmup} warm-up, {args.threads} torch thread(s)"
    )
    columns = ("method", "kind", "set-up s", "wall ms/round", "CPU ms/round", "wall / FedAvg", "CPU / FedAvg")
    for column in (*columns, f"<= {TARGET}x (wall, CPU)"):
        table.add_column(column, justify="right")
    for spec in specs:
        rows = times[spec.label]
        wall, cpu = _ratio(rows, reference, 0), _ratio(rows, reference, 1)
        kind = _kind(spec)
        verdict = ", ".join("yes" if r <= TARGET else "NO" for r in (wall, cpu)) if kind == "client" else ""
        table.add_row(
            spec.label,
            kind,
            f"{setup[spec.label]:.2f}",
            f"{1e3 * statistics.median(t[0] for t in rows):.0f}",
            f"{1e3 * statistics.median(t[1] for t in rows):.0f}",
            f"{wall:.2f}x",
            f"{cpu:.2f}x",
            verdict,
        )
    Console(width=140).print(table)  # wide enough when piped to a file


if __name__ == "__main__":
    main()
