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

The ``cnn`` model runs on its own workload, the speed issue's: 28x28 inputs, 50 samples per device,
1,000 devices, batch 1 and 10 (``--cnn-*``); its target is 30% of the matmul rate at batch 10.

Run: ``.venv/bin/python benchmarks/bench_flops.py [--devices 2000] [--batch-sizes 1 8 32] [--models softmax mlp cnn]``
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

FEATURES, CNN_FEATURES, CLASSES = 64, 28 * 28, 10
CNN_TARGET = 0.30  # fraction of the matmul rate the cnn should reach at batch 10 (speed issue)


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


def epoch_flops_per_s(
    kind: str, devices: int, samples: int, batch_size: int, repeats: int, features: int = FEATURES
) -> tuple[float, float]:
    """(FLOP/s, seconds) of the best of ``repeats`` local epochs of the whole fleet."""
    rng = np.random.default_rng(0)
    x = rng.random((devices * samples, features), dtype=np.float32)
    y = rng.integers(0, CLASSES, devices * samples)
    fleet = pack_fleet(x, y, np.split(np.arange(devices * samples), devices))
    model = build_model(kind, (features,), CLASSES)
    stack = replicate(init_params(model, 0), devices)
    ids = torch.arange(devices)
    config = TrainConfig(lr=0.01, local_epochs=1, batch_size=batch_size)
    local_train(model, stack, fleet, ids, config, seed=0, round_index=0)  # warm-up
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        local_train(model, stack, fleet, ids, config, seed=0, round_index=repeat + 1)
        best = min(best, time.perf_counter() - start)
    flops = 3.0 * forward_flops(model, (features,)) * samples * devices
    return flops / best, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=32, help="samples per device")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=["softmax", "mlp", "cnn"])
    parser.add_argument("--cnn-devices", type=int, default=1000)
    parser.add_argument("--cnn-samples", type=int, default=50, help="samples per device, cnn")
    parser.add_argument("--cnn-batch-sizes", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    peak = matmul_flops_per_s(args.matmul_size, args.repeats)
    table = Table(
        title=f"Batched local epoch vs torch.matmul {args.matmul_size}^2 "
        f"({peak / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads)"
    )
    columns = ("model", "input", "devices", "samples/device", "batch", "epoch s", "GFLOP/s", "fraction of matmul")
    for column in (*columns, "target"):
        table.add_column(column, justify="right")
    for kind in args.models:
        cnn = kind == "cnn"
        devices, samples = (args.cnn_devices, args.cnn_samples) if cnn else (args.devices, args.samples)
        features = CNN_FEATURES if cnn else FEATURES
        for batch in args.cnn_batch_sizes if cnn else args.batch_sizes:
            rate, seconds = epoch_flops_per_s(kind, devices, samples, batch, args.repeats, features)
            target = ""
            if cnn and batch == 10:
                target = f">= {CNN_TARGET:.0%}: " + ("met" if rate / peak >= CNN_TARGET else "not met")
            table.add_row(
                kind,
                "28x28" if cnn else str(features),
                f"{devices:,}",
                str(samples),
                str(batch),
                f"{seconds:.3f}",
                f"{rate / 1e9:.2f}",
                f"{rate / peak:.1%}",
                target,
            )
    Console().print(table)


if __name__ == "__main__":
    main()
