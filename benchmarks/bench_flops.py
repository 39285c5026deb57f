"""Training throughput as a fraction of this machine's limit: achieved FLOP/s of a batched local epoch
against the FLOP/s of a large ``torch.matmul``, both measured in this run.

The reference is a square float32 matmul (``--matmul-size``, default 2048:
2 n^3 FLOPs per call), which on a CPU is as close to peak as torch gets. The
epoch is the product's code path, ``clients.classification.training.local_train`` over a whole
fleet, counted as the engine counts it for simulated compute time
(``Workload.epoch_flops``: forward + backward ~ 3x the forward FLOPs per
sample). Per-sample SGD (the E-Tree paper's batch size 1) is a batch of
matrix-vector products, bound by memory rather than arithmetic, so expect a
small fraction there and a larger one with mini-batches.

Run: ``.venv/bin/python benchmarks/bench_flops.py [--devices 2000] [--batch-sizes 1 8 32]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model, forward_flops
from clients.params import init_params, replicate
from clients.train_config import TrainConfig
from etree.backends.local import local_train

FEATURES, CLASSES = 64, 10


def matmul_flops_per_s(size: int, repeats: int) -> float:
    """Best-of-``repeats`` FLOP/s of one ``size x size`` float32 matmul."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.matmul(a, b)  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def epoch_flops_per_s(kind: str, devices: int, samples: int, batch_size: int, repeats: int) -> tuple[float, float]:
    """(FLOP/s, seconds) of the best of ``repeats`` local epochs of the whole fleet."""
    rng = np.random.default_rng(0)
    x = rng.random((devices * samples, FEATURES), dtype=np.float32)
    y = rng.integers(0, CLASSES, devices * samples)
    fleet = pack_fleet(x, y, np.split(np.arange(devices * samples), devices))
    model = build_model(kind, (FEATURES,), CLASSES)
    stack = replicate(init_params(model, 0), devices)
    ids = torch.arange(devices)
    config = TrainConfig(lr=0.01, local_epochs=1, batch_size=batch_size)
    local_train(model, stack, fleet, ids, config, seed=0, round_index=0)  # warm-up
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        local_train(model, stack, fleet, ids, config, seed=0, round_index=repeat + 1)
        best = min(best, time.perf_counter() - start)
    flops = 3.0 * forward_flops(model, (FEATURES,)) * samples * devices
    return flops / best, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=32, help="samples per device")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=["softmax", "mlp"])
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    peak = matmul_flops_per_s(args.matmul_size, args.repeats)
    table = Table(
        title=f"Batched local epoch vs torch.matmul {args.matmul_size}^2 "
        f"({peak / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads)"
    )
    for column in ("model", "devices", "samples/device", "batch", "epoch s", "GFLOP/s", "fraction of matmul"):
        table.add_column(column, justify="right")
    for kind in args.models:
        for batch in args.batch_sizes:
            rate, seconds = epoch_flops_per_s(kind, args.devices, args.samples, batch, args.repeats)
            table.add_row(
                kind,
                f"{args.devices:,}",
                str(args.samples),
                str(batch),
                f"{seconds:.3f}",
                f"{rate / 1e9:.2f}",
                f"{rate / peak:.1%}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
