"""The recommender trainer that the compact, shrinking-batch one replaced: every device at every step,
whole item tables. Kept as an independent oracle: the product's trainer must give the same numbers."""

from __future__ import annotations

import torch

from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.models import Recommender, gather_rows, score_rows
from clients.recommendation.training import pair_losses, sample_negatives
from clients.train_config import epoch_order


def dense_train(
    model: Recommender,
    params: ParamStack,
    data: InteractionFleet,
    ids: torch.Tensor,
    lr: float,
    local_epochs: int,
    batch_size: int,
    *,
    seed: int,
    round_index: int,
) -> ParamStack:
    """``local_epochs`` of SGD of the devices ``ids`` on whole tables, as the engine trained before."""
    params = {name: tensor.clone() for name, tensor in params.items()}
    counts = data.counts[ids]
    counts_np = counts.numpy()
    capacity = max(1, int(counts_np.max(initial=0)))
    users, items, seen = data.users[ids, :capacity], data.items[ids, :capacity], data.seen[ids]
    ids_np = ids.numpy()
    rows = torch.arange(len(ids)).unsqueeze(1)
    dense_names = [name for name in params if name not in model.tables]
    table_names = sorted(model.tables)
    for epoch in range(local_epochs):
        order = torch.from_numpy(epoch_order(seed, round_index, epoch, ids_np, counts_np, capacity))
        for step in range(-(-capacity // batch_size)):
            positions = torch.arange(step * batch_size, min((step + 1) * batch_size, capacity))
            valid = (positions.unsqueeze(0) < counts.unsqueeze(1)).float()
            if not bool(valid.any()):
                break
            index = order[:, positions]
            user, positive = users[rows, index], items[rows, index]
            negative = sample_negatives(
                seed, round_index, epoch, ids_np, positions.numpy(), model.negatives, seen, user, data.num_items
            )
            pair_items = torch.cat([positive.unsqueeze(-1), negative], dim=-1)
            pair_users = user.unsqueeze(-1).expand_as(pair_items)
            flat_users, flat_items = pair_users.flatten(1), pair_items.flatten(1)
            gathered = {
                k: v.requires_grad_(True) for k, v in gather_rows(params, model, flat_users, flat_items).items()
            }
            dense = {name: params[name].requires_grad_(True) for name in dense_names}
            losses = pair_losses(model, score_rows(model, dense, gathered).view_as(pair_items))
            if model.l2 > 0:
                norms = torch.stack([v.pow(2).reshape(*v.shape[:2], -1).sum(-1) for v in gathered.values()]).sum(0)
                losses = losses + model.l2 * norms.view_as(pair_items).sum(-1)
            leaves = [gathered[name] for name in table_names] + [dense[name] for name in dense_names]
            grads = torch.autograd.grad((losses * valid).sum(), leaves)
            with torch.no_grad():
                for name, grad in zip(table_names, grads[: len(table_names)], strict=True):
                    index_of = flat_users if model.tables[name] == "user" else flat_items
                    target = params[name].detach()
                    target.index_put_((rows, index_of), grad * -lr, accumulate=True)
                    params[name] = target
                scale = 1.0 / valid.sum(1).clamp(min=1.0)
                for name, grad in zip(dense_names, grads[len(table_names) :], strict=True):
                    shape = (-1,) + (1,) * (grad.dim() - 1)
                    params[name] = params[name].detach() - lr * grad * scale.view(shape)
    return params
