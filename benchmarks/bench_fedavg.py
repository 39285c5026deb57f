"""Client-rounds per second of in-engine FedAvg against a plain per-device loop, same run.

Workload: digits-sized data (64 features, 10 classes, 18 samples per device),
one local epoch per round, softmax regression and a one-hidden-layer MLP. The
batched engine is the product's code path (``local_train`` + ``weighted_mean``).
The reference loop is what one would write without the engine: one
``nn.Module`` + ``torch.optim.SGD`` per device, then a running mean. Its cost
per client-round does not depend on the fleet size, so at large fleets it is
timed on a subset (the table says how many devices) and reported as a rate.

Run: ``.venv/bin/python benchmarks/bench_fedavg.py [--devices 100 1000 10000] [--batch-size 1]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model
from clients.params import init_params, replicate
from clients.train_config import TrainConfig
from etree.backends.local import local_train
from etree.trees.aggregation import weighted_mean

SAMPLES, FEATURES, CLASSES = 18, 64, 10
LOOP_DEVICES_MAX = 300


def make_fleet(devices: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((devices * SAMPLES, FEATURES), dtype=np.float32)
    y = rng.integers(0, CLASSES, devices * SAMPLES)
    parts = np.split(np.arange(devices * SAMPLES), devices)
    return pack_fleet(x, y, parts)


def batched_rate(kind: str, devices: int, config: TrainConfig, rounds: int) -> float:
    fleet = make_fleet(devices)
    model = build_model(kind, (FEATURES,), CLASSES)
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
    fleet = make_fleet(measured)
    template = build_model(kind, (FEATURES,), CLASSES)
    global_state = {k: v.clone() for k, v in init_params(template, 0).items()}
    start = time.perf_counter()
    for _ in range(rounds):
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for d in range(measured):
            model = build_model(kind, (FEATURES,), CLASSES)
            model.load_state_dict(global_state)
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
            x, y = fleet.x[d], fleet.y[d]
            for index in torch.randperm(SAMPLES).split(config.batch_size):
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
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)  # benchmark script, not library code: only the loop's shuffles use it
    config = TrainConfig(lr=0.05, local_epochs=1, batch_size=args.batch_size)
    table = Table(
        title=f"FedAvg client-rounds/s (batch size {args.batch_size}, {SAMPLES} samples/device, "
        f"{torch.get_num_threads()} threads)"
    )
    for column in ("model", "devices", "batched cr/s", "loop cr/s", "loop timed on", "speed-up"):
        table.add_column(column, justify="right")
    for kind in ("softmax", "mlp"):
        for devices in args.devices:
            batched_rate(kind, min(devices, 50), config, 1)  # warm-up
            fast = batched_rate(kind, devices, config, args.rounds)
            slow, measured = loop_rate(kind, devices, config, 1 if devices > 100 else args.rounds)
            table.add_row(
                kind, f"{devices:,}", f"{fast:,.0f}", f"{slow:,.0f}", f"{measured} devices", f"{fast / slow:.0f}x"
            )
    Console().print(table)


if __name__ == "__main__":
    main()
