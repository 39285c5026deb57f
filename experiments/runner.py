"""Turn a spec into a workload, run every protocol on it, and return the records.

The one root seed is split with ``numpy.random.SeedSequence.spawn`` into named
streams (topology, data, init, training), so changing one part of a spec does
not reshuffle the randomness of the others. All protocols of a run share the
same workload and training stream (common random numbers), so their curves
differ only by what the protocols do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch

import etree  # noqa: F401  (registers protocols)
from clients.datasets import Dataset, load_dataset
from clients.fleet import pack_fleet
from clients.models import build_model, init_params
from clients.partition import partition_indices
from clients.training import TrainConfig
from etree.protocol import Record, Workload, run_protocol
from etree.registry import make_protocol
from experiments.spec import Spec
from topologies import build_topology

STREAMS = ("topology", "data", "init", "training")
RoundCallback = Callable[[str, int], None]


def stream_seeds(seed: int) -> dict[str, int]:
    """One independent integer seed per named stream, derived from the spec's seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {
        name: int(child.generate_state(1, dtype=np.uint32)[0]) for name, child in zip(STREAMS, children, strict=True)
    }


@dataclass
class RunResult:
    """What a run produced, for the results writer."""

    spec: Spec
    graph: nx.Graph
    records: list[Record] = field(default_factory=list)
    structures: dict[str, Any] = field(default_factory=dict)
    partition_summary: dict[str, Any] = field(default_factory=dict)


def build_workload(spec: Spec) -> tuple[Workload, Dataset, list[np.ndarray]]:
    """Topology, data, partition and model for a spec; fails on bad input before anything runs."""
    seeds = stream_seeds(spec.seed)
    graph = build_topology(spec.topology.kind, spec.topology.devices, seed=seeds["topology"], **spec.topology.options)
    devices = spec.topology.devices
    dataset = load_dataset(spec.data.dataset, seed=seeds["data"], devices=devices, **spec.data.options)
    parts = partition_indices(
        dataset.y_train,
        devices,
        scheme=spec.data.partition,
        seed=seeds["data"],
        alpha=spec.data.alpha,
        classes_per_device=spec.data.classes_per_device,
        min_partition_size=spec.data.min_partition_size,
        natural_groups=dataset.natural_groups,
        coordinates=np.array([graph.nodes[d]["pos"] for d in range(devices)], dtype=np.float64),
    )
    model = build_model(spec.model.kind, dataset.input_shape, dataset.num_classes, **spec.model.options)
    workload = Workload(
        model=model,
        initial=init_params(model, seeds["init"]),
        data=pack_fleet(dataset.x_train, dataset.y_train, parts),
        x_test=torch.from_numpy(dataset.x_test),
        y_test=torch.from_numpy(dataset.y_test),
        graph=graph,
        train=TrainConfig(spec.train.lr, spec.train.local_epochs, spec.train.batch_size),
        seed=seeds["training"],
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        rounds=spec.rounds,
    )
    return workload, dataset, parts


def run_spec(spec: Spec, on_round: RoundCallback | None = None) -> RunResult:
    """Run every protocol of the spec in order and collect their records."""
    workload, dataset, parts = build_workload(spec)
    protocols = [make_protocol(p.name, p.label, dict(p.options)) for p in spec.protocols]
    result = RunResult(spec, workload.graph)
    sizes = np.array([len(p) for p in parts])
    result.partition_summary = {
        "dataset": dataset.name,
        "train_samples": len(dataset.y_train),
        "test_samples": len(dataset.y_test),
        "samples_per_device": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())},
        "classes_per_device_mean": float(np.mean([len(np.unique(dataset.y_train[p])) for p in parts])),
    }
    for protocol in protocols:
        for record in run_protocol(protocol, workload, rounds=spec.rounds, eval_every=spec.eval_every):
            result.records.append(record)
            if on_round is not None and record.metric == "accuracy":
                on_round(protocol.label, record.round)
        structure = protocol.structure()
        if structure is not None:
            result.structures[protocol.label] = structure
    return result
