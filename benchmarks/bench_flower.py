"""In-engine FedAvg against the `flower` protocol (real flwr + Ray) on the identical workload.

Same spec, partitions, model, local training code and seeds; full participation,
one local epoch of per-sample SGD on 40 synthetic samples per device (softmax
regression). Flower's time is its whole wall time; its fixed start-up (Ray and
actors) is estimated from runs of 1 and ``--rounds`` rounds: start-up = T1 - per-round,
per-round = (TR - T1) / (R - 1). Both runs evaluate only at the end.

Run: ``.venv/bin/python benchmarks/bench_flower.py [--devices 50 500] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from etree.engine.loop import run_protocol
from etree.protocols import make_protocol
from experiments.runner import build_workload
from experiments.spec import Spec, spec_from_dict


def _spec(devices: int, rounds: int) -> Spec:
    return spec_from_dict(
        {
            "seed": 0,
            "rounds": rounds,
            "eval_every": rounds,
            "topology": {"kind": "random_geometric", "devices": devices},
            "data": {"dataset": "synthetic", "partition": "natural", "samples_per_device": 40},
            "model": {"kind": "softmax"},
            "train": {"lr": 0.02, "local_epochs": 1, "batch_size": 1},
            "protocols": [{"name": "fedavg", "weighted": True}, {"name": "flower", "weighted": True}],
        }
    )


def _wall(name: str, devices: int, rounds: int) -> float:
    workload, _, _ = build_workload(_spec(devices, rounds))
    protocol = make_protocol(name, name, {"weighted": True})
    start = time.perf_counter()
    for _ in run_protocol(protocol, workload, rounds=rounds, eval_every=rounds):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"FedAvg client-rounds/s: in-engine vs Flower ({args.rounds} rounds, full participation)")
    for column in (
        "devices",
        "in-engine cr/s",
        "Flower cr/s (all)",
        "Flower start-up s",
        "Flower steady cr/s",
        "ratio (all)",
        "ratio (steady)",
    ):
        table.add_column(column, justify="right")
    for devices in args.devices:
        engine = _wall("fedavg", devices, args.rounds)
        flower_one = _wall("flower", devices, 1)
        flower_all = _wall("flower", devices, args.rounds)
        per_round = (flower_all - flower_one) / max(1, args.rounds - 1)
        client_rounds = devices * args.rounds
        fast, slow = client_rounds / engine, client_rounds / flower_all
        if per_round > 0:  # noisy machines can make the 1-round run look slower than the longer one
            steady = devices / per_round
            extra = [f"{max(0.0, flower_one - per_round):.1f}", f"{steady:,.1f}", f"{fast / steady:,.0f}x"]
        else:
            extra = ["n/a", "n/a", "n/a"]
        table.add_row(
            f"{devices:,}", f"{fast:,.0f}", f"{slow:,.1f}", extra[0], extra[1], f"{fast / slow:,.0f}x", extra[2]
        )
    Console().print(table)


if __name__ == "__main__":
    main()
