"""Scaling: wall time and peak memory of E-Tree and FedAvg runs from 1,000 to 100,000 devices.

Each fleet size runs in a fresh process (peak RSS is per process), through the
product's own path: ``build_workload`` (topology, data, partition) then
``run_protocol`` for E-Tree and FedAvg, evaluating every round. Workload:
``random_geometric`` devices, LEAF ``synthetic`` data with one shared labelling
(``shared_model``: 60 features, 10 classes, ``--samples`` per device, each
device's inputs shifted by its own mean, natural partition), softmax
regression, per-sample SGD, E-Tree with KMA over K = ``--clusters`` and the
root aggregating every round. Times: the workload
build, each protocol's set-up (E-Tree: public-set pre-training + KMA + tree;
FedAvg: choosing the server) and its mean round (one local epoch of every
device, aggregation, simulated timing, one evaluation), and one E-Tree
checkpoint (the snapshot's tensors, the bytes safetensors stores). Memory: peak RSS of
the process, and what one device costs (the slope of peak RSS between the two
largest fleets).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--devices 1000 10000 100000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from etree.engine.checkpoint import pack_state, take_snapshot
from etree.engine.loop import run_protocol
from etree.protocols import make_protocol
from experiments.runner import build_workload
from experiments.spec import spec_from_dict


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def spec_for(devices: int, rounds: int, samples: int, clusters: int) -> dict[str, Any]:
    return {
        "name": f"scale_{devices}",
        "seed": 0,
        "rounds": rounds,
        "eval_every": 1,
        "topology": {"kind": "random_geometric", "devices": devices},
        "data": {"dataset": "synthetic", "partition": "natural", "samples_per_device": samples, "shared_model": True},
        "model": {"kind": "softmax"},
        "train": {"lr": 0.02, "local_epochs": 1, "batch_size": 1},
        "protocols": [{"name": "etree", "groups": [clusters, 1], "ratios": [1, 1]}, {"name": "fedavg"}],
    }


def measure_one(devices: int, rounds: int, samples: int, clusters: int) -> dict[str, Any]:
    """Time and memory of every stage of one fleet size (run in its own process)."""
    spec = spec_from_dict(spec_for(devices, rounds, samples, clusters))
    start = time.perf_counter()
    workload, _, _ = build_workload(spec)
    out: dict[str, Any] = {"devices": devices, "workload_s": time.perf_counter() - start, "workload_mb": peak_rss_mb()}
    for entry in spec.protocols:
        protocol = make_protocol(entry.name, entry.label, dict(entry.options))
        stamps: dict[int, float] = {}
        accuracy: dict[int, float] = {}
        start = time.perf_counter()
        for record in run_protocol(protocol, workload, rounds=rounds, eval_every=1):
            if record.metric == "accuracy":
                stamps[record.round] = time.perf_counter()
                accuracy[record.round] = record.value
        start_snapshot = time.perf_counter()
        snapshot = take_snapshot(protocol, rounds, 0, {})
        _, tensors = pack_state(snapshot.to_state() if snapshot is not None else {})
        snapshot_bytes = sum(t.numel() * t.element_size() for t in tensors.values())  # what safetensors stores
        out[entry.label] = {
            "checkpoint_s": time.perf_counter() - start_snapshot,
            "checkpoint_mb": snapshot_bytes / 2**20,
            "setup_s": stamps[0] - start,
            "round_s": (stamps[rounds] - stamps[0]) / rounds,
            "total_s": stamps[rounds] - start,
            "accuracy": [accuracy[r] for r in sorted(accuracy)],
            "peak_mb": peak_rss_mb(),
        }
    workload.trainer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=30, help="samples per device")
    parser.add_argument("--clusters", type=int, default=100, help="KMA clusters K")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: measure one size, print JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.rounds, args.samples, args.clusters)))
        return

    rows = []
    for devices in args.devices:
        clusters = min(args.clusters, devices // 4)
        command = [sys.executable, __file__, "--one", str(devices), "--rounds", str(args.rounds)]
        command += ["--samples", str(args.samples), "--clusters", str(clusters)]
        start = time.perf_counter()
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"{devices:,} devices done in {row['wall_s']:.0f} s", file=sys.stderr)

    table = Table(title=f"E-Tree and FedAvg, {args.rounds} rounds, synthetic softmax, {args.samples} samples/device")
    columns = ["devices", "workload s", "etree setup s", "etree s/round", "fedavg s/round", "process wall s"]
    columns += ["peak RSS MB", "etree checkpoint MB (s)", "etree acc r0 -> last"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        etree, fedavg = row["etree"], row["fedavg"]
        table.add_row(
            f"{row['devices']:,}",
            f"{row['workload_s']:.1f}",
            f"{etree['setup_s']:.1f}",
            f"{etree['round_s']:.2f}",
            f"{fedavg['round_s']:.2f}",
            f"{row['wall_s']:.0f}",
            f"{max(etree['peak_mb'], fedavg['peak_mb']):,.0f}",
            f"{etree['checkpoint_mb']:,.0f} ({etree['checkpoint_s']:.1f})",
            f"{etree['accuracy'][0]:.3f} -> {etree['accuracy'][-1]:.3f}",
        )
    Console(width=200).print(table)
    if len(rows) >= 2:
        small, large = rows[-2], rows[-1]
        slope = (large["fedavg"]["peak_mb"] - small["fedavg"]["peak_mb"]) / (large["devices"] - small["devices"])
        sizes = f"{small['devices']:,} -> {large['devices']:,}"
        print(f"memory per device (peak RSS slope, {sizes}): {slope * 2**20:,.0f} B")


if __name__ == "__main__":
    main()
