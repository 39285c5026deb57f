"""Segment means: the arithmetic of every aggregation layer."""

import torch

from etree.trees.aggregation import broadcast, segment_mean, weighted_mean


def _stack(rows):
    return {"w": torch.tensor(rows, dtype=torch.float32)}


def test_identical_models_aggregate_to_themselves():
    model = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    stack = {"w": model.repeat(6, 1, 1)}
    out = segment_mean(stack, torch.tensor([0, 1, 0, 1, 2, 2]), 3, torch.tensor([1.0, 2, 3, 4, 5, 6]))
    assert torch.allclose(out["w"], model.expand(3, 3, 4))


def test_segment_mean_unweighted_and_weighted():
    stack = _stack([[1.0], [3.0], [10.0]])
    plain = segment_mean(stack, torch.tensor([0, 0, 1]), 2)
    assert plain["w"].flatten().tolist() == [2.0, 10.0]
    weighted = segment_mean(stack, torch.tensor([0, 0, 1]), 2, torch.tensor([3.0, 1.0, 5.0]))
    assert weighted["w"].flatten().tolist() == [1.5, 10.0]


def test_empty_segment_is_zero_not_nan():
    out = segment_mean(_stack([[1.0], [2.0]]), torch.tensor([0, 0]), 2)
    assert out["w"].flatten().tolist() == [1.5, 0.0]


def test_weighted_mean_is_fedavg_formula():
    stack = _stack([[0.0, 2.0], [4.0, 6.0]])
    out = weighted_mean(stack, torch.tensor([1.0, 3.0]))
    assert torch.allclose(out["w"], torch.tensor([[3.0, 5.0]]))


def test_broadcast_copies_rows():
    stack = _stack([[1.0], [2.0]])
    out = broadcast(stack, torch.tensor([1, 1, 0]))
    assert out["w"].flatten().tolist() == [2.0, 2.0, 1.0]
    out["w"][0] = 99.0
    assert stack["w"].flatten().tolist() == [1.0, 2.0]
