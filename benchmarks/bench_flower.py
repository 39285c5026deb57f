"""In-engine FedAvg against the `flower` protocol (real flwr + Ray) on the identical workload.

Same spec, partitions, model, local training code and seeds; full participation,
one local epoch of per-sample SGD on 40 synthetic samples per device (softmax
regression). Each side's time is its whole wall time (set-up, rounds, evaluations); its steady
per-round cost is estimated the same way for both, from runs of 1 and ``--rounds`` rounds:
per-round = (TR - T1) / (R - 1), start-up = T1 - per-round (Flower: Ray and actors; the engine:
its set-up and first evaluation). Every run evaluates at round 0 and at the end. "ratio
(steady)" is the engine's steady client-rounds/s over Flower's, measured side by side;
"engine all-in / Flower steady" keeps the engine's set-up and evaluations in. The engine's
runs come after one warm-up run in the same process (torch's first kernels), the fastest of
``--repeats`` counting; Flower's two runs are single.

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


def _steady(devices: int, one: float, many: float, rounds: int) -> float | None:
    """Client-rounds/s of the rounds after the first, (TR - T1) / (R - 1) per round; None when noise
    makes the 1-round run look slower than the longer one."""
    per_round = (many - one) / max(1, rounds - 1)
    return devices / per_round if per_round > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="in-engine runs per size (the fastest counts)")
    args = parser.parse_args()
    table = Table(title=f"FedAvg client-rounds/s: in-engine vs Flower ({args.rounds} rounds, full participation)")
    for column in (
        "devices",
        "in-engine cr/s (all)",
        "in-engine steady cr/s",
        "Flower cr/s (all)",
        "Flower start-up s",
        "Flower steady cr/s",
        "ratio (all)",
        "ratio (steady)",
        "engine all-in / Flower steady",
    ):
        table.add_column(column, justify="right")
    for devices in args.devices:
        _wall("fedavg", devices, 1)  # warm-up: torch's first kernels and thread pool, paid once per process
        engine_one = min(_wall("fedavg", devices, 1) for _ in range(args.repeats))
        engine = min(_wall("fedavg", devices, args.rounds) for _ in range(args.repeats))
        flower_one = _wall("flower", devices, 1)
        flower_all = _wall("flower", devices, args.rounds)
        client_rounds = devices * args.rounds
        fast, slow = client_rounds / engine, client_rounds / flower_all
        engine_steady, steady = (
            _steady(devices, engine_one, engine, args.rounds),
            _steady(devices, flower_one, flower_all, args.rounds),
        )
        start_up = flower_one - devices / steady if steady else None
        table.add_row(
            f"{devices:,}",
            f"{fast:,.0f}",
            f"{engine_steady:,.0f}" if engine_steady else "n/a",
            f"{slow:,.1f}",
            f"{max(0.0, start_up):.1f}" if start_up is not None else "n/a",
            f"{steady:,.1f}" if steady else "n/a",
            f"{fast / slow:,.0f}x",
            f"{engine_steady / steady:,.0f}x" if engine_steady and steady else "n/a",
            f"{fast / steady:,.0f}x" if steady else "n/a",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
