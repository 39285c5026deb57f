"""Batched local training: one local epoch of every device is one tensor program.

The parameters of D devices are a stacked dict ``{name: [D, ...]}``. A step runs
the model over every device's mini-batch at once (``torch.func.vmap`` over
``functional_call``) and takes the gradient of the sum of per-device mean losses:
devices share no parameters, so that gradient is exactly each device's own.
Unequal dataset sizes are handled by masking: device d takes ceil(n_d / B) steps
per epoch, its last batch partial, exactly as a per-device loop would.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from clients.classification.conv_step import conv_plan, conv_step
from clients.classification.fleet import FleetData
from clients.errors import ClientsError
from clients.params import ParamStack
from clients.train_config import TrainConfig, epoch_order

# devices trained at once: a chunk's weights stay in cache (8,192 softmax devices, 2 threads: 1,024 per chunk
# 1.2x faster than 4,096; sorted by size, 3.1x on a Dirichlet partition)
DEFAULT_CHUNK = 1024


def train_classifier(
    model: nn.Module,
    params: ParamStack,
    data: FleetData,
    device_ids: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    round_index: int,
    chunk_size: int = DEFAULT_CHUNK,
    correction: ParamStack | None = None,
) -> ParamStack:
    """Run ``config.local_epochs`` of SGD on the devices ``device_ids`` (row i of ``params``).

    Returns new tensors; ``params`` is not modified. Devices are processed in
    chunks of ``chunk_size`` to bound memory on large fleets. ``correction`` (row i
    for device i, every parameter) is a constant added to each step's gradient:
    SCAFFOLD's ``c - c_i`` (Karimireddy et al., ICML 2020, Algorithm 1, line 10);
    ``config.prox_mu`` adds FedProx's ``mu (w - w_0)`` (see ``_train_chunk``).
    """
    if correction is not None and any(
        name not in correction or correction[name].shape != t.shape for name, t in params.items()
    ):
        raise ClientsError("correction: needs one row per device, shaped like params, for every parameter")
    if len(device_ids) <= chunk_size:
        return _train_chunk(
            model, params, data, device_ids, config, seed=seed, round_index=round_index, correction=correction
        )
    # A chunk takes as many steps as its largest device has batches, so chunks are cut from the devices
    # sorted by sample count: on skewed (Dirichlet) partitions a chunk of small devices stops early
    # (a device's sample order depends on the device alone, so its training is the same in any chunk).
    by_size = torch.from_numpy(np.argsort(data.counts[device_ids].numpy(), kind="stable"))
    out = {name: torch.empty_like(t) for name, t in params.items()}
    for start in range(0, len(device_ids), chunk_size):
        rows = by_size[start : start + chunk_size]
        chunk = {name: t[rows] for name, t in params.items()}
        fixed = None if correction is None else {name: correction[name][rows] for name in params}
        trained = _train_chunk(
            model, chunk, data, device_ids[rows], config, seed=seed, round_index=round_index, correction=fixed
        )
        for name, tensor in trained.items():
            out[name][rows] = tensor
    return out


def _train_chunk(
    model: nn.Module,
    params: ParamStack,
    data: FleetData,
    ids: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    round_index: int,
    correction: ParamStack | None = None,
) -> ParamStack:
    """Local SGD of one chunk of devices. Any step path (``step_fn``) gets the proximal term and the
    correction for free (``_LocalTerms``, around each step): each step follows the gradient of
    loss + mu/2 ||w - w_0||^2 (FedProx, Li et al. 2020, Eq. 2), plus the correction (SCAFFOLD)."""
    x, y, counts = data.x[ids], data.y[ids], data.counts[ids]
    counts_np = counts.numpy()
    capacity = max(1, int(counts_np.max(initial=0)))
    x, y = x[:, :capacity], y[:, :capacity]
    batch = config.batch_size
    steps = -(-capacity // batch)
    rows = torch.arange(len(ids)).unsqueeze(1)
    dense = dense_layers(model)
    step_fn: Callable[..., None]
    if dense is not None:
        current = {name: t.detach().clone() for name, t in params.items()}
        step_fn = partial(_dense_step, dense, current, lr=config.lr)
    elif (plan := conv_plan(model)) is not None:
        current = {name: t.detach().clone(memory_format=torch.contiguous_format) for name, t in params.items()}
        step_fn = partial(conv_step, plan, current, lr=config.lr)
    else:

        def run_model(p: ParamStack, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(model, p, (xb,))

        current = {name: t.detach().clone().requires_grad_(True) for name, t in params.items()}
        step_fn = partial(_autograd_step, vmap(run_model), current, lr=config.lr)
    terms = _LocalTerms(current, params, config, correction, step_folds_decay=dense is not None)
    full_steps = -(-int(counts_np.min(initial=0)) // batch)  # steps in which every device has a sample
    for epoch in range(config.local_epochs):
        order = torch.from_numpy(epoch_order(seed, round_index, epoch, ids.numpy(), counts_np, capacity))
        for step in range(steps):
            positions = torch.arange(step * batch, min((step + 1) * batch, capacity))
            valid = (positions.unsqueeze(0) < counts.unsqueeze(1)).float()  # [D, b]
            if not bool(valid.any()):
                break
            index = order[:, positions]
            # each device's loss is the mean over its valid samples in the batch
            weight = valid / valid.sum(1, keepdim=True).clamp(min=1.0)
            every_device = step < full_steps
            folded = terms.before(every_device)
            if folded:
                step_fn(x[rows, index], y[rows, index], weight, decay=folded)
            else:
                step_fn(x[rows, index], y[rows, index], weight)
            terms.after(None if every_device else valid[:, 0])
    return {name: t.detach() for name, t in current.items()}


class _LocalTerms:
    """FedProx's proximal term and SCAFFOLD's correction around any step path: before a step,
    ``extra = mu (w - w_0) + correction`` from the pre-step weights w; after it, ``w -= lr * extra``
    on the devices that stepped. Nothing at all when mu = 0 and there is no correction (plain SGD,
    bit for bit).

    Computed as ``w += K - lr mu w_pre`` with ``K = lr (mu w_0 - correction)`` fixed for the round,
    into buffers allocated once: one pass over the weights before the step (mu > 0 only) and one
    after it (per-sample SGD is memory-bound, and fresh multi-MB tensors per step cost page faults).
    A step path that can scale the weights it updates (``step_folds_decay``: the dense path's
    ``baddbmm_(beta = 1 - lr mu)``) takes the ``- lr mu w_pre`` part itself on steps where every
    device has a sample, which saves the pass before the step (FedProx cost 1.9x -> see
    ``benchmarks/bench_baselines.py``); on the other steps a device without a sample must not decay.
    """

    def __init__(
        self,
        current: ParamStack,
        anchor: ParamStack,
        config: TrainConfig,
        correction: ParamStack | None,
        *,
        step_folds_decay: bool = False,
    ) -> None:
        self.active = config.prox_mu > 0 or correction is not None
        self.step_folds_decay = step_folds_decay
        if not self.active:
            return
        lr, self.decay = config.lr, config.lr * config.prox_mu
        self.weights = list(current.values())  # every step path updates these very tensors in place
        with torch.no_grad():
            if self.decay == 0:
                assert correction is not None
                self.fixed = torch._foreach_mul([correction[name] for name in current], -lr)
            else:
                self.fixed = torch._foreach_mul([anchor[name] for name in current], self.decay)
                if correction is not None:
                    torch._foreach_add_(self.fixed, [correction[name] for name in current], alpha=-lr)
        self.extra = [torch.empty_like(t) for t in self.fixed] if self.decay > 0 else self.fixed
        self.pending = self.extra  # what ``after`` adds

    def before(self, every_device: bool) -> float:
        """The decay ``lr mu`` the step must fold in (``w <- (1 - decay) w - lr g``), or 0 when it is
        computed here. ``every_device``: every device has a sample in this step."""
        if not self.active or self.decay == 0:
            return 0.0
        if every_device and self.step_folds_decay:
            self.pending = self.fixed
            return self.decay
        with torch.no_grad():
            for out, fixed, weight in zip(self.extra, self.fixed, self.weights, strict=True):
                torch.add(fixed, weight, alpha=-self.decay, out=out)
        self.pending = self.extra
        return 0.0

    def after(self, stepped: torch.Tensor | None) -> None:
        """``stepped``: which devices had a sample in this batch (None: all of them)."""
        if not self.active:
            return
        with torch.no_grad():
            if stepped is None:
                torch._foreach_add_(self.weights, self.pending)
                return
            for weight, extra in zip(self.weights, self.pending, strict=True):  # a device with no sample
                weight.addcmul_(extra, stepped.view(-1, *[1] * (extra.dim() - 1)))  # left takes no step


def _autograd_step(
    forward: Callable[..., torch.Tensor],
    params: ParamStack,
    xb: torch.Tensor,
    yb: torch.Tensor,
    weight: torch.Tensor,
    *,
    lr: float,
) -> None:
    """One SGD step of any model: vmap'd forward, autograd backward, in-place update."""
    logits = forward(params, xb)  # [D, b, C]
    losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
    tensors = list(params.values())
    grads = torch.autograd.grad((losses.view_as(weight) * weight).sum(), tensors)
    with torch.no_grad():  # in place: fresh multi-MB tensors per step cost page faults
        torch._foreach_add_(tensors, grads, alpha=-lr)


DenseLayers = list[tuple[str, str]]


def dense_layers(model: nn.Module) -> DenseLayers | None:
    """(weight, bias) names of a ReLU MLP (softmax, mlp): exactly ``Sequential([Flatten], Linear,
    ReLU, Linear, ..., Linear)`` with biases; None for anything else, which trains on the generic path.

    Classes are compared exactly, not by ``isinstance``: a subclass (a user's plugged model) may
    compute something other than what :func:`_dense_step` hard-codes.
    """
    if type(model) is not nn.Sequential:
        return None
    modules = list(model)
    first = modules[0] if modules else None
    start = 1 if type(first) is nn.Flatten and (first.start_dim, first.end_dim) == (1, -1) else 0
    body = modules[start:]
    if len(body) % 2 == 0:  # Linear (ReLU Linear)* has odd length; empty is not a model
        return None
    layers: DenseLayers = []
    for offset, module in enumerate(body):
        if type(module) is not (nn.ReLU if offset % 2 else nn.Linear):
            return None
        if offset % 2 == 0:
            if module.bias is None:  # _dense_step adds a bias
                return None
            layers.append((f"{start + offset}.weight", f"{start + offset}.bias"))
    return layers


def _dense_step(
    layers: DenseLayers,
    params: ParamStack,
    xb: torch.Tensor,
    yb: torch.Tensor,
    weight: torch.Tensor,
    *,
    lr: float,
    decay: float = 0.0,
) -> None:
    """One SGD step of a ReLU MLP by hand, for every device at once.

    Same arithmetic as autograd on the per-device mean cross-entropy, but each
    weight update is one fused in-place ``baddbmm_`` (W -= lr * g^T h): no
    gradient tensor is allocated, which on per-sample SGD is most of the cost
    (measured ~3x faster than the vmap + autograd path on this machine).
    ``decay`` scales the pre-step weights in the same pass (W <- (1 - decay) W - lr g^T h):
    FedProx's ``- lr mu w`` without a pass of its own.
    """
    inputs = [xb.flatten(2)]  # [D, b, features]
    for position, (w, b) in enumerate(layers):
        z = torch.baddbmm(params[b].unsqueeze(1), inputs[-1], params[w].transpose(1, 2))
        inputs.append(torch.relu(z) if position < len(layers) - 1 else z)
    grad = torch.softmax(inputs.pop(), dim=-1)  # d loss / d logits = weight * (p - onehot)
    grad.scatter_add_(2, yb.unsqueeze(-1), -torch.ones_like(grad[..., :1]))
    grad.mul_(weight.unsqueeze(-1))
    for position in range(len(layers) - 1, -1, -1):
        w, b = layers[position]
        h = inputs[position]
        below = torch.bmm(grad, params[w]) * (h > 0) if position > 0 else None  # before W changes
        params[w].baddbmm_(grad.transpose(1, 2), h, beta=1.0 - decay, alpha=-lr)
        if decay:
            params[b].mul_(1.0 - decay)
        params[b].sub_(grad.sum(1), alpha=lr)
        if below is not None:
            grad = below
