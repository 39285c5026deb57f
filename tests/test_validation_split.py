"""The validation split: carved from the training data before partitioning, stratified and seeded;
KMA's public set comes from it, so no test sample shapes the E-Tree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import tiny_spec_with

from clients.classification.datasets import Dataset, split_validation
from clients.classification.fleet import FleetData
from clients.errors import ClientsError
from etree.core.errors import ProtocolError
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.kma_tree import ETreeBuilder, TreeOptions
from experiments.runner import build_workload, run_spec
from experiments.spec import SpecError, spec_from_dict


def _dataset(n: int = 500, classes: int = 5) -> Dataset:
    """Row i has feature i, so a row's identity survives every split."""
    y = np.random.default_rng(0).integers(0, classes, n).astype(np.int64)
    x = np.arange(n, dtype=np.float32).reshape(-1, 1)
    groups = (np.arange(n) % 7).astype(np.int64)
    return Dataset("rows", x, y, x[:10], y[:10], num_classes=classes, natural_groups=groups)


def test_the_split_is_stratified_disjoint_and_seeded():
    data = _dataset()
    kept, x_val, y_val = split_validation(data, 0.2, seed=4)
    train_rows, val_rows = kept.x_train[:, 0].astype(int), x_val[:, 0].astype(int)
    assert np.intersect1d(train_rows, val_rows).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(len(data.y_train)))
    counts = np.bincount(data.y_train, minlength=5)
    assert np.array_equal(np.bincount(y_val, minlength=5), np.floor(0.2 * counts + 0.5))  # 20% of every class
    assert np.array_equal(data.y_train[val_rows], y_val) and np.array_equal(data.y_train[train_rows], kept.y_train)
    assert kept.natural_groups is not None
    assert np.array_equal(kept.natural_groups, train_rows % 7)  # owners travel with their rows
    again = split_validation(data, 0.2, seed=4)[1]
    other = split_validation(data, 0.2, seed=5)[1]
    assert np.array_equal(again, x_val) and not np.array_equal(other, x_val)
    empty = split_validation(data, 0.0, seed=4)
    assert len(empty[2]) == 0 and len(empty[0].y_train) == len(data.y_train)
    with pytest.raises(ClientsError, match=r"data\.validation_fraction"):
        split_validation(data, 1.0, seed=4)


def _spec(**data: object) -> dict:
    return tiny_spec_with(data={"dataset": "synthetic", "partition": "natural", **data})


def test_no_device_holds_a_validation_sample():
    workload, dataset, _ = build_workload(spec_from_dict(_spec()))
    fleet = workload.data
    assert isinstance(fleet, FleetData)
    held = torch.cat([fleet.x[d, : int(fleet.counts[d])] for d in range(fleet.devices)])
    assert len(workload.y_val) == pytest.approx(0.1 * (len(held) + len(workload.y_val)), abs=10)
    assert int(fleet.counts.sum()) == len(dataset.y_train)  # partitioned after the carve
    # continuous features: a shared row would be the same sample
    assert not (workload.x_val[:, None, :] == held[None, :, :]).all(-1).any()
    assert not (workload.x_val[:, None, :] == workload.x_test[None, :, :]).all(-1).any()


def test_validation_accuracy_is_reported_and_a_zero_fraction_has_none():
    result = run_spec(spec_from_dict(tiny_spec_with(rounds=2)))
    assert {"validation_accuracy", "accuracy"} <= {r.metric for r in result.records}
    none = run_spec(spec_from_dict(tiny_spec_with(rounds=2, data={"validation_fraction": 0.0})))
    assert "validation_accuracy" not in {r.metric for r in none.records}


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(SpecError, match=r"data\.validation_fraction"):
        spec_from_dict(tiny_spec_with(data={"validation_fraction": fraction}))


def _kma_tree(workload: Workload) -> tuple[list[np.ndarray], np.ndarray]:
    builder = ETreeBuilder("e", TreeOptions(groups=(3, 1), pretrain_epochs=2, public_samples=1000))
    tree = builder(workload, NetworkModel(workload.graph))
    assert builder.build.accuracy is not None
    return [*tree.heads, *tree.parents], builder.build.accuracy


def test_kma_uses_no_test_sample():
    """Poisoning the test set (noise for features, shuffled labels) changes neither the pre-trained
    accuracies KMA sees nor the tree; poisoning the validation split changes them."""
    workload, _, _ = build_workload(spec_from_dict(tiny_spec_with()))
    tree, accuracy = _kma_tree(workload)
    generator = torch.Generator().manual_seed(0)
    poisoned = dataclasses.replace(
        workload,
        x_test=torch.rand(workload.x_test.shape, generator=generator),
        y_test=workload.y_test[torch.randperm(len(workload.y_test), generator=generator)],
    )
    tree_p, accuracy_p = _kma_tree(poisoned)
    assert np.array_equal(accuracy_p, accuracy)
    assert all(np.array_equal(a, b) for a, b in zip(tree_p, tree, strict=True))
    shifted = dataclasses.replace(workload, y_val=(workload.y_val + 1) % workload.num_classes)
    assert not np.array_equal(_kma_tree(shifted)[1], accuracy)  # the accuracies do come from the split


def test_kma_without_a_validation_split_is_refused():
    workload, _, _ = build_workload(spec_from_dict(tiny_spec_with(data={"validation_fraction": 0.0})))
    with pytest.raises(ProtocolError, match=r"data\.validation_fraction > 0"):
        _kma_tree(workload)
