"""Scaling: wall time and peak memory of E-Tree and FedAvg runs from 1,000 to 100,000 devices, per K.

Each fleet size runs in a fresh process (peak RSS is per process), through the
product's own path: ``build_workload`` (topology, data, partition) then
``run_protocol`` for E-Tree and FedAvg, evaluating every round. Workload:
``random_geometric`` devices, LEAF ``synthetic`` data with one shared labelling
(``shared_model``: 60 features, 10 classes, ``--samples`` per device, each
device's inputs shifted by its own mean, natural partition), softmax
regression, per-sample SGD, E-Tree with KMA over each K of ``--clusters`` (one row
per fleet size and K) and the root aggregating every round; ``--topology`` and
``--partition`` (``pathological``: 2 classes per device; ``dirichlet``: alpha 0.5)
change the network and the label skew. Times: the workload
build, each protocol's set-up (E-Tree: public-set pre-training + KMA + tree;
FedAvg: choosing the server) and its mean round (one local epoch of every
device, aggregation, simulated timing, one evaluation), and one E-Tree
checkpoint (the snapshot's tensors, the bytes safetensors stores), and writing the run
folder (``experiments.results.write_run``, into a temporary folder); KMA's iterations and
the cluster sizes it made. Memory: peak RSS of the process, and what one device costs (the
slope of peak RSS between the two largest fleets of the first K).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--devices 1000 10000 100000] [--clusters 8 100 1000]
[--rounds 5] [--topology random_links] [--partition dirichlet]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from etree.engine.checkpoint import pack_state, take_snapshot
from etree.engine.loop import run_protocol
from etree.protocols import make_protocol
from experiments.results import write_run
from experiments.runner import RunOutput, build_workload
from experiments.spec import spec_from_dict

PARTITIONS: dict[str, dict[str, Any]] = {
    "natural": {"partition": "natural"},
    "pathological": {"partition": "pathological", "classes_per_device": 2},
    "dirichlet": {"partition": "dirichlet", "alpha": 0.5},
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def spec_for(
    devices: int,
    rounds: int,
    samples: int,
    clusters: int,
    topology: str = "random_geometric",
    partition: str = "natural",
) -> dict[str, Any]:
    return {
        "name": f"scale_{devices}",
        "seed": 0,
        "rounds": rounds,
        "eval_every": 1,
        "topology": {"kind": topology, "devices": devices},
        "data": {"dataset": "synthetic", "samples_per_device": samples, "shared_model": True, **PARTITIONS[partition]},
        "model": {"kind": "softmax"},
        "train": {"lr": 0.02, "local_epochs": 1, "batch_size": 1},
        "protocols": [{"name": "etree", "groups": [clusters, 1], "ratios": [1, 1]}, {"name": "fedavg"}],
    }


def measure_one(
    devices: int, rounds: int, samples: int, clusters: int, topology: str, partition: str
) -> dict[str, Any]:
    """Time and memory of every stage of one fleet size (run in its own process)."""
    spec = spec_from_dict(spec_for(devices, rounds, samples, clusters, topology, partition))
    start = time.perf_counter()
    workload, _, _ = build_workload(spec)
    out: dict[str, Any] = {"devices": devices, "clusters": clusters}
    out |= {"workload_s": time.perf_counter() - start, "workload_mb": peak_rss_mb()}
    result = RunOutput(spec, workload.graph)
    for entry in spec.protocols:
        protocol = make_protocol(entry.name, entry.label, dict(entry.options))
        stamps: dict[int, float] = {}
        accuracy: dict[int, float] = {}
        start = time.perf_counter()
        for record in run_protocol(protocol, workload, rounds=rounds, eval_every=1):
            result.records.append(record)
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
        result.structures[entry.label] = protocol.structure()
        clustering = result.structures[entry.label].get("clustering")
        if clustering is not None:  # E-Tree: how KMA went, and the cluster sizes it made
            sizes = [len(c["members"]) for c in result.structures[entry.label]["layers"][0]["clusters"]]
            out[entry.label] |= {"iterations": clustering["iterations"], "sizes": [min(sizes), max(sizes)]}
        loads = protocol.link_loads()
        if loads is not None:
            result.links[entry.label] = loads
    workload.trainer.close()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_run(result, Path(folder) / "run")
        out["write_s"] = time.perf_counter() - start
    out["peak_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=30, help="samples per device")
    parser.add_argument("--clusters", type=int, nargs="+", default=[100], help="KMA clusters K (one row each)")
    parser.add_argument("--topology", default="random_geometric", choices=["random_geometric", "random_links"])
    parser.add_argument("--partition", default="natural", choices=sorted(PARTITIONS))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: measure one size, print JSON
    args = parser.parse_args()
    if args.one is not None:
        row = measure_one(args.one, args.rounds, args.samples, args.clusters[0], args.topology, args.partition)
        print(json.dumps(row))
        return

    rows = []
    for clusters_asked in args.clusters:
        for devices in args.devices:
            clusters = min(clusters_asked, devices // 4)
            command = [sys.executable, __file__, "--one", str(devices), "--rounds", str(args.rounds)]
            command += ["--samples", str(args.samples), "--clusters", str(clusters)]
            command += ["--topology", args.topology, "--partition", args.partition]
            start = time.perf_counter()
            child = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(child.stdout.strip().splitlines()[-1])
            row["wall_s"] = time.perf_counter() - start
            rows.append(row)
            print(f"{devices:,} devices, K = {clusters} done in {row['wall_s']:.0f} s", file=sys.stderr)

    title = f"E-Tree and FedAvg, {args.rounds} rounds, synthetic softmax, {args.samples} samples/device"
    table = Table(title=f"{title}, {args.topology}, {args.partition} partition")
    columns = ["devices", "K", "KMA iterations", "cluster sizes", "workload s", "etree setup s", "etree s/round"]
    columns += ["fedavg s/round", "write s"]
    columns += ["process wall s", "peak RSS MB", "etree checkpoint MB (s)", "etree acc r0 -> last"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        etree, fedavg = row["etree"], row["fedavg"]
        table.add_row(
            f"{row['devices']:,}",
            f"{row['clusters']:,}",
            f"{etree['iterations']}",
            f"{etree['sizes'][0]:,}-{etree['sizes'][1]:,}",
            f"{row['workload_s']:.1f}",
            f"{etree['setup_s']:.1f}",
            f"{etree['round_s']:.2f}",
            f"{fedavg['round_s']:.2f}",
            f"{row['write_s']:.1f}",
            f"{row['wall_s']:.0f}",
            f"{row['peak_mb']:,.0f}",
            f"{etree['checkpoint_mb']:,.0f} ({etree['checkpoint_s']:.1f})",
            f"{etree['accuracy'][0]:.3f} -> {etree['accuracy'][-1]:.3f}",
        )
    Console(width=200).print(table)
    first = [row for row in rows if row["clusters"] == rows[0]["clusters"]]
    if len(first) >= 2:
        small, large = first[-2], first[-1]
        slope = (large["fedavg"]["peak_mb"] - small["fedavg"]["peak_mb"]) / (large["devices"] - small["devices"])
        sizes = f"{small['devices']:,} -> {large['devices']:,}"
        print(f"memory per device (peak RSS slope, {sizes}): {slope * 2**20:,.0f} B")


if __name__ == "__main__":
    main()
