"""The paper's ablations: individual training never communicates; grouped clusters never merge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import label_sharded_workload

from etree.backends.local import local_train
from etree.core.errors import ProtocolError
from etree.engine.loop import run_protocol
from etree.engine.workload import Workload
from etree.protocols import make_protocol
from topologies import build_topology

QUICK = {"pretrain_epochs": 1, "public_samples": 200}


def make_workload(devices: int = 20, seed: int = 0) -> Workload:
    """Digits split by label into contiguous shards (1-2 classes per device), on a small random graph."""
    return label_sharded_workload(devices, seed, graph=build_topology("random_links", devices, seed=seed))


# -- individual -----------------------------------------------------------------
def test_individual_never_communicates_and_reports_the_spread():
    workload = make_workload()
    records = list(run_protocol(make_protocol("individual", "solo", {}), workload, rounds=3, eval_every=1))
    assert all(r.bytes_sent == 0 for r in records)
    final = {r.metric: r.value for r in records if r.round == 3}
    assert final["accuracy_std"] > 0 and 0 < final["accuracy"] < 1
    assert records[-1].sim_time_s > 0  # local compute still takes simulated time


def test_individual_devices_train_alone():
    workload = make_workload()
    protocol = make_protocol("individual", "solo", {})
    protocol.setup(workload)
    for r in (1, 2):
        protocol.run_round(r)
    device = torch.tensor([7])
    alone = {k: v.unsqueeze(0) for k, v in workload.initial.items()}
    for r in (1, 2):
        alone = local_train(
            workload.model, alone, workload.data, device, workload.train, seed=workload.seed, round_index=r
        )
    for name, tensor in alone.items():
        assert torch.allclose(protocol.params[name][7], tensor[0], atol=1e-6)  # type: ignore[attr-defined]


def test_individual_evaluates_a_fixed_seeded_sample_of_devices():
    workload = make_workload()
    first, second = (make_protocol("individual", "solo", {"eval_devices": 5}) for _ in range(2))
    first.setup(workload)
    second.setup(workload)
    assert first.evaluation_models()["1.weight"].shape[0] == 5
    assert torch.equal(first.evaluated, second.evaluated)  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match=r"protocols\.solo\.eval_devices"):
        make_protocol("individual", "solo", {"eval_devices": 0})


# -- grouped ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_clusters_never_merge(seed):
    workload = make_workload(seed=seed)
    protocol = make_protocol("grouped", "g", {"groups": [4, 1], **QUICK})
    records = list(run_protocol(protocol, workload, rounds=4, eval_every=2))
    assert "root_aggregations" not in {r.metric for r in records}
    assert records[-1].bytes_sent > 0
    models = protocol.evaluation_models()["1.weight"]
    assert models.shape[0] == 4
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(models[a], models[b])  # four separate models after rounds
    clusters = protocol.tree.parents[0]  # type: ignore[attr-defined]
    params = protocol.params["1.weight"]  # type: ignore[attr-defined]
    for k in range(4):  # within a cluster every device holds the cluster model
        members = np.flatnonzero(clusters == k)
        assert torch.allclose(params[members], params[members[:1]].expand(len(members), -1, -1))


def test_grouped_builds_the_etree_tree():
    workload = make_workload()
    options = {"groups": [4, 1], "clustering": "kmedoids"}
    trees = []
    for name in ("grouped", "etree"):
        protocol = make_protocol(name, name, options)
        protocol.setup(workload)
        structure = protocol.structure()
        assert structure is not None
        json.dumps(structure)
        trees.append(structure["layers"])
    assert trees[0] == trees[1]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"groups": [1]}, "groups"),
        ({"groups": [4, 1], "ratios": [1]}, "ratios"),
        ({"clustering": "spectral"}, "clustering"),
        ({"delta": 0}, "delta"),
    ],
)
def test_grouped_bad_options_name_the_field(options, field):
    with pytest.raises(ProtocolError, match=rf"protocols\.g\.{field}"):
        make_protocol("grouped", "g", options)
