"""Turn a spec into a workload, run every protocol on it, and return the records.

The one root seed is split with ``numpy.random.SeedSequence.spawn`` into named
streams (topology, data, init, training), so changing one part of a spec does
not reshuffle the randomness of the others. All protocols of a run share the
same workload and training stream (common random numbers), so their curves
differ only by what the protocols do; a ``[[protocols]]`` table's own ``train``
replaces ``[train]``'s values in that protocol's workload alone.

The validation split (``[data] validation_fraction``) is carved from the training
data before partitioning, so no device holds a validation sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import networkx as nx
import numpy as np
import torch

from clients.classification.datasets import Dataset, split_validation
from clients.classification.fleet import pack_fleet
from clients.classification.models import build_model
from clients.datasets import load_dataset
from clients.params import init_params
from clients.partition import PARTITIONERS, partition_indices
from clients.recommendation.interactions import Interactions, pack_interactions
from clients.recommendation.models import build_recommender, init_recommender
from clients.train_config import TrainConfig
from etree.backends import make_trainer
from etree.backends.base import Trainer
from etree.engine.checkpoint import RunSnapshot
from etree.engine.loop import prepare_protocol, run_protocol
from etree.engine.protocol import Record
from etree.engine.workload import Workload
from etree.network.heterogeneity import apply_heterogeneity
from etree.network.links import LinkLoad
from etree.protocols import make_protocol
from experiments.spec import ProtocolSpec, Spec, SpecError
from topologies import build_topology

STREAMS = ("topology", "data", "init", "training", "network")  # append only: earlier streams keep their seeds
RoundCallback = Callable[[str, int, float], None]  # (protocol label, round, simulated seconds)


def stream_seeds(seed: int) -> dict[str, int]:
    """One independent integer seed per named stream, derived from the spec's seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {
        name: int(child.generate_state(1, dtype=np.uint32)[0]) for name, child in zip(STREAMS, children, strict=True)
    }


@dataclass
class RunCheckpoint:
    """Where a multi-protocol run stands: protocols before ``protocol_index`` are finished (their
    records, structures and link loads are here); ``snapshot`` is the state of protocol
    ``protocol_index`` between two rounds (None: it has not started)."""

    protocol_index: int
    records: list[Record] = field(default_factory=list)
    structures: dict[str, Any] = field(default_factory=dict)
    links: dict[str, LinkLoad] = field(default_factory=dict)
    snapshot: RunSnapshot | None = None


CheckpointCallback = Callable[[RunCheckpoint], None]


@dataclass
class RunOutput:
    """What a run produced, for the results writer and the public ``etree.RunResult``."""

    spec: Spec
    graph: nx.Graph
    records: list[Record] = field(default_factory=list)
    structures: dict[str, Any] = field(default_factory=dict)
    partition_summary: dict[str, Any] = field(default_factory=dict)
    links: dict[str, LinkLoad] = field(default_factory=dict)


def build_workload(spec: Spec) -> tuple[Workload, Dataset | Interactions, list[np.ndarray]]:
    """Topology, data, partition and model for a spec; fails on bad input before anything runs."""
    seeds = stream_seeds(spec.seed)
    graph = build_topology(spec.topology.kind, spec.topology.devices, seed=seeds["topology"], **spec.topology.options)
    devices = spec.topology.devices
    nodes = graph.number_of_nodes()
    for index, crash in enumerate(spec.network.crash):
        if isinstance(crash.node, int) and crash.node >= nodes:
            raise SpecError(f"network.crash[{index}].node: got {crash.node}; the topology has nodes 0..{nodes - 1}")
    graph = apply_heterogeneity(graph, devices, spec.network, seeds["network"])
    partition_options, dataset_options = _data_options(spec)
    dataset = load_dataset(spec.data.dataset, seed=seeds["data"], devices=devices, **dataset_options)
    if isinstance(dataset, Interactions):
        return _recommender_workload(spec, graph, dataset, seeds), dataset, _user_parts(spec, dataset, seeds)
    dataset, x_val, y_val = split_validation(dataset, spec.data.validation_fraction, seeds["data"])
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
        options=partition_options,
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
        network=spec.network,
        trainer=_trainer(spec),
        x_val=torch.from_numpy(x_val),
        y_val=torch.from_numpy(y_val),
    )
    return workload, dataset, parts


def protocol_workload(workload: Workload, protocol: ProtocolSpec) -> Workload:
    """The workload one protocol runs on: the run's, with that protocol's own ``train`` values (if any)
    in place of ``[train]``'s, so its local training (and FLOPs, and KMA's pre-training) use them."""
    if not protocol.train:
        return workload
    return dataclasses.replace(workload, train=dataclasses.replace(workload.train, **protocol.train))


def _data_options(spec: Spec) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[data]``'s extra keys split: those the partition scheme declares are its options (a
    plugged partitioner's), every other one is the dataset loader's."""
    declared = PARTITIONERS.options(spec.data.partition)
    options = spec.data.options
    return {k: v for k, v in options.items() if k in declared}, {k: v for k, v in options.items() if k not in declared}


def _trainer(spec: Spec) -> Trainer:
    """The ``[backend]`` trainer; a Ray one starts Ray when it first trains, and ``run_spec`` closes it."""
    return make_trainer(spec.backend.kind, workers=spec.backend.workers, address=spec.backend.address)


RECOMMENDER_PARTITIONS = ("natural", "iid")


def _user_parts(spec: Spec, data: Interactions, seeds: dict[str, int]) -> list[np.ndarray]:
    """The users of each device: ``natural`` gives user d to device d, ``iid`` deals users evenly
    (a household or edge box holding several users)."""
    if spec.data.partition not in RECOMMENDER_PARTITIONS:
        raise SpecError(
            f"data.partition: {spec.data.partition!r} does not apply to interaction data; choose one of: "
            f"{', '.join(RECOMMENDER_PARTITIONS)} (devices hold users)"
        )
    users = np.arange(data.num_users)
    return partition_indices(
        np.zeros(data.num_users, dtype=np.int64),
        spec.topology.devices,
        scheme=spec.data.partition,
        seed=seeds["data"],
        min_partition_size=spec.data.min_partition_size,
        natural_groups=users,
    )


def _recommender_workload(spec: Spec, graph: nx.Graph, data: Interactions, seeds: dict[str, int]) -> Workload:
    """A recommender workload: devices hold users' interactions; user embeddings are private."""
    fleet = pack_interactions(data, _user_parts(spec, data, seeds))
    model = build_recommender(spec.model.kind, fleet.slots, data.num_items, **spec.model.options)
    return Workload(
        model=model,
        initial=init_recommender(model, seeds["init"]),
        data=fleet,
        x_test=torch.zeros(0, 2),
        y_test=torch.zeros(0, dtype=torch.int64),
        graph=graph,
        train=TrainConfig(spec.train.lr, spec.train.local_epochs, spec.train.batch_size),
        seed=seeds["training"],
        input_shape=(2,),
        num_classes=data.num_items,
        rounds=spec.rounds,
        network=spec.network,
        private=model.private,
        trainer=_trainer(spec),
    )


def _partition_summary(dataset: Dataset | Interactions, parts: list[np.ndarray], validation: int) -> dict[str, Any]:
    sizes = np.array([len(p) for p in parts])
    if isinstance(dataset, Interactions):
        per_user = dataset.user_counts
        interactions = np.array([per_user[p].sum() for p in parts])
        return {
            "dataset": dataset.name,
            "users": dataset.num_users,
            "items": dataset.num_items,
            "train_interactions": len(dataset.train_user),
            "test_cases": dataset.num_users,
            "users_per_device": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())},
            "interactions_per_device": {
                "min": int(interactions.min()),
                "mean": float(interactions.mean()),
                "max": int(interactions.max()),
            },
        }
    return {
        "dataset": dataset.name,
        "train_samples": len(dataset.y_train),  # what the devices hold, the validation split carved off
        "validation_samples": validation,
        "test_samples": len(dataset.y_test),
        "samples_per_device": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())},
        "classes_per_device_mean": float(np.mean([len(np.unique(dataset.y_train[p])) for p in parts])),
    }


def check_workload(spec: Spec) -> None:
    """Build ``spec``'s workload and drop it, so what depends on the data and the network (a
    partition, a topology file, a dataset option) fails before a batch of runs starts."""
    workload, _, _ = build_workload(spec)
    workload.trainer.close()


def run_spec(
    spec: Spec,
    on_round: RoundCallback | None = None,
    *,
    resume: RunCheckpoint | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: CheckpointCallback | None = None,
) -> RunOutput:
    """Run every protocol of the spec in order and collect their records.

    With ``on_checkpoint``, the run's state goes to it every ``checkpoint_every`` rounds and
    whenever a protocol finishes; ``resume`` continues from such a state (same spec).
    """
    workload, dataset, parts = build_workload(spec)
    protocols = [make_protocol(p.name, p.label, dict(p.options)) for p in spec.protocols]
    workloads = [protocol_workload(workload, p) for p in spec.protocols]
    result = RunOutput(spec, workload.graph)
    result.partition_summary = _partition_summary(dataset, parts, len(workload.y_val))
    start = resume or RunCheckpoint(protocol_index=0)
    result.records = list(start.records)
    result.structures = dict(start.structures)
    result.links = dict(start.links)
    reported: dict[str, int] = {}

    def checkpoint(index: int, snapshot: RunSnapshot | None) -> None:
        if on_checkpoint is not None:
            on_checkpoint(
                RunCheckpoint(index, list(result.records), dict(result.structures), dict(result.links), snapshot)
            )

    try:
        # every protocol still to start is set up before the first round of any: a check that depends
        # on the workload (groups larger than the fleet, gossip on one device) fails before anything ran
        restored = start.protocol_index if start.snapshot is not None else None
        for index in range(start.protocol_index, len(protocols)):
            if index != restored:
                prepare_protocol(protocols[index], workloads[index])
        for index, protocol in enumerate(protocols[start.protocol_index :], start=start.protocol_index):
            for record in run_protocol(
                protocol,
                workloads[index],
                rounds=spec.rounds,
                eval_every=spec.eval_every,
                resume=start.snapshot if index == restored else None,
                checkpoint_every=checkpoint_every,
                on_checkpoint=partial(checkpoint, index),
                prepared=index != restored,
            ):
                result.records.append(record)
                if on_round is not None and record.round != reported.get(protocol.label):
                    reported[protocol.label] = record.round  # the first record of each reported round
                    on_round(protocol.label, record.round, record.sim_time_s)
            structure = protocol.structure()
            if structure is not None:
                result.structures[protocol.label] = structure
            loads = protocol.link_loads()
            if loads is not None:
                result.links[protocol.label] = loads
            if index + 1 < len(protocols):
                checkpoint(index + 1, None)
    finally:
        workload.trainer.close()  # the training backend's processes (Ray) end with the run, even a failed one
    return result
