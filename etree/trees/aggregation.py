"""Model averaging as pure tensor functions: the only arithmetic aggregation needs.

Any layer of any tree is a segment mean: rows of a parameter stack grouped by a
segment id and averaged (``index_add_``), optionally weighted by example counts.
FedAvg is the one-segment case (McMahan et al., AISTATS 2017, Algorithm 1).
"""

from __future__ import annotations

import torch

from clients.params import ParamStack


def segment_mean(
    stack: ParamStack,
    segments: torch.Tensor,
    num_segments: int,
    weights: torch.Tensor | None = None,
) -> ParamStack:
    """Mean of the rows of ``stack`` in each segment: returns a stack of ``num_segments`` models.

    ``segments[i]`` is row i's segment. ``weights`` (non-negative, one per row)
    gives a weighted mean; ``None`` is the unweighted mean of the E-Tree paper.
    An empty (or zero-weight) segment yields zeros: callers never average nobody.
    """
    w = torch.ones(len(segments)) if weights is None else weights.to(torch.float32)
    totals = torch.zeros(num_segments).index_add_(0, segments, w)
    scale = torch.where(totals > 0, 1.0 / totals.clamp(min=1e-30), torch.zeros_like(totals))
    out: ParamStack = {}
    for name, tensor in stack.items():
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        summed = torch.zeros((num_segments, *tensor.shape[1:]), dtype=tensor.dtype)
        summed.index_add_(0, segments, tensor * w.view(shape))
        out[name] = summed * scale.view(shape)
    return out


def weighted_mean(stack: ParamStack, weights: torch.Tensor | None = None) -> ParamStack:
    """The (weighted) mean of all rows: a stack holding one model."""
    return segment_mean(stack, torch.zeros(next(iter(stack.values())).shape[0], dtype=torch.int64), 1, weights)


def broadcast(stack: ParamStack, index: torch.Tensor) -> ParamStack:
    """Row ``index[i]`` of ``stack`` for every i: how an aggregate is pushed down to its members."""
    return {name: tensor[index] for name, tensor in stack.items()}
