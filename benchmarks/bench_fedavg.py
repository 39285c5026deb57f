"""Client-rounds per second of in-engine FedAvg against a plain per-device loop, same run.

Workloads: digits-sized data (64 features, 10 classes, 18 samples per device) for softmax
regression and a one-hidden-layer MLP, at ``--devices`` and ``--batch-size``; and the speed
issue's CNN workload, the ``cnn`` model on 28x28 inputs with 50 samples per device, at the
(devices, batch) pairs of ``--cnn-runs`` (targets: >= 10x the loop at batch 1, >= 3x at batch
10 and 1,000 devices). One local epoch per round. The batched engine is the product's code path
(``local_train`` + ``weighted_mean``). The reference loop is what one would write without the
engine: one ``nn.Module`` and ``torch.optim.SGD``, reloaded with the global model for each
device (built once, so the loop pays no construction cost), then a running mean. Its cost per
client-round does not depend on the fleet size, so at large fleets it is timed on a subset (the
table says how many devices) and reported as a rate.

Run: ``.venv/bin/python benchmarks/bench_fedavg.py [--devices 100 1000 10000] [--batch-size 1]
[--models softmax mlp cnn] [--cnn-runs 100:1 100:10 1000:10]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from clients.classification.fleet import FleetData, pack_fleet
from clients.classification.models import build_model
from clients.params import init_params, replicate
from clients.train_config import TrainConfig
from etree.backends.local import local_train
from etree.trees.aggregation import weighted_mean

CLASSES = 10
WORKLOADS = {"softmax": (64, 18), "mlp": (64, 18), "cnn": (28 * 28, 50)}  # (features, samples/device)
LOOP_DEVICES_MAX = 300


def make_fleet(kind: str, devices: int, seed: int = 0) -> FleetData:
    features, samples = WORKLOADS[kind]
    rng = np.random.default_rng(seed)
    x = rng.random((devices * samples, features), dtype=np.float32)
    y = rng.integers(0, CLASSES, devices * samples)
    parts = np.split(np.arange(devices * samples), devices)
    return pack_fleet(x, y, parts)


def target(kind: str, devices: int, batch: int) -> float | None:
    """The speed issue's minimum speed-up over the loop, where it sets one (the CNN)."""
    if kind != "cnn":
        return None
    return 10.0 if batch == 1 else 3.0 if batch == 10 and devices >= 1000 else None


def batched_rate(kind: str, devices: int, config: TrainConfig, rounds: int) -> float:
    fleet = make_fleet(kind, devices)
    model = build_model(kind, (WORKLOADS[kind][0],), CLASSES)
    global_model = replicate(init_params(model, 0), 1)
    ids = torch.arange(devices)
    start = time.perf_counter()
    for r in range(rounds):
        stack = {k: v.expand(devices, *v.shape[1:]).clone() for k, v in global_model.items()}
        trained = local_train(model, stack, fleet, ids, config, seed=0, round_index=r)
        global_model = weighted_mean(trained)
    return devices * rounds / (time.perf_counter() - start)


def loop_rate(kind: str, devices: int, config: TrainConfig, rounds: int) -> tuple[float, int]:
    measured = min(devices, LOOP_DEVICES_MAX)
    fleet = make_fleet(kind, measured)
    features, samples = WORKLOADS[kind]
    template = build_model(kind, (features,), CLASSES)
    global_state = {k: v.clone() for k, v in init_params(template, 0).items()}
    model = template
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)  # plain SGD keeps no state
    start = time.perf_counter()
    for _ in range(rounds):
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for d in range(measured):
            model.load_state_dict(global_state)
            x, y = fleet.x[d], fleet.y[d]
            for index in torch.randperm(samples).split(config.batch_size):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
                optimizer.step()
            for k, v in model.state_dict().items():
                total[k] += v
        global_state = {k: v / measured for k, v in total.items()}
    return measured * rounds / (time.perf_counter() - start), measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["softmax", "mlp", "cnn"], choices=sorted(WORKLOADS))
    parser.add_argument("--cnn-runs", nargs="+", default=["100:1", "100:10", "1000:10"], help="devices:batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)  # benchmark script, not library code: only the loop's shuffles use it
    table = Table(
        title=f"FedAvg client-rounds/s (softmax/mlp: {WORKLOADS['mlp'][1]} samples/device, "
        f"cnn: 28x28, {WORKLOADS['cnn'][1]} samples/device; {torch.get_num_threads()} threads)"
    )
    for column in ("model", "devices", "batch", "batched cr/s", "loop cr/s", "loop timed on", "speed-up", "target"):
        table.add_column(column, justify="right")
    for kind in args.models:
        runs = (
            [tuple(int(v) for v in run.split(":")) for run in args.cnn_runs]
            if kind == "cnn"
            else [(devices, args.batch_size) for devices in args.devices]
        )
        for devices, batch in runs:
            config = TrainConfig(lr=0.05, local_epochs=1, batch_size=batch)
            batched_rate(kind, min(devices, 50), config, 1)  # warm-up
            fast = batched_rate(kind, devices, config, args.rounds)
            slow, measured = loop_rate(kind, devices, config, 1 if devices > 100 else args.rounds)
            goal = target(kind, devices, batch)
            table.add_row(
                kind,
                f"{devices:,}",
                str(batch),
                f"{fast:,.0f}",
                f"{slow:,.0f}",
                f"{measured} devices",
                f"{fast / slow:.1f}x" if fast / slow < 10 else f"{fast / slow:.0f}x",
                "" if goal is None else f">= {goal:.0f}x: " + ("met" if fast / slow >= goal else "not met"),
            )
    Console().print(table)


if __name__ == "__main__":
    main()
