"""Batched SGD for convolutional stacks (the ``cnn`` model and any plain Conv/Linear/ReLU/pool
``nn.Sequential``): every device at once, backward written by hand like the dense path.

Layout. Devices are folded into channels: an image activation of ``n`` devices is one tensor
``[b, H, W, n * C]`` (NHWC, device-major channels), a device's convolution is one group of a grouped
convolution (``groups = n * module.groups``), and pooling and ReLU act per channel, so need no
change. Passed to torch as its channels-last NCHW view, oneDNN's grouped kernels read and write
that layout directly. After ``Flatten`` activations are ``[n, b, features]`` and a Linear is one
``baddbmm``, exactly as in the dense path.

Why this and not the alternatives, measured on the project's 2-core Sapphire Rapids (AVX-512),
float32, per 40 samples of the ``cnn`` model on 28x28 images, one thread:

- grouped conv in channels-last: the 16->16 conv runs at ~130 GFLOP/s forward and ~115 backward
  (input and weight gradients), most of this machine's matmul rate; in NCHW it reaches ~55 and
  pooling in NCHW is ~15x slower than in channels-last.
- im2col + ``bmm`` per device: fine while one device's columns stay in cache (~200 GFLOP/s at
  batch 1) but ~80 forward and ~25 for the input gradient (the ``col2im`` side) at batch 10.
- vmap + autograd (the generic path) lowers to NCHW grouped convolutions over the whole fleet and
  allocates every activation and gradient of every device each step: 0.4x a per-device loop.

Two choices make the elementwise work cheap. Devices are processed in blocks of about
:data:`BLOCK_SAMPLES` samples so a block's activations stay in the 2 MB per-core L2 cache
(all devices at once stream hundreds of MB per pass and ran ~2x slower). And a ReLU followed by a
max-pool is computed as pool-then-ReLU: both are monotone, so values and gradients are identical
(ties included, see :func:`conv_plan`), and the ReLU and its mask touch a quarter of the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from clients.params import ParamStack

BLOCK_SAMPLES = 40  # samples (devices x batch) per block and per thread: see the module docstring

_aten = torch.ops.aten
Pair = tuple[int, int]


class _Layer(Protocol):
    """A layer of a plan: forward saves what its backward needs; backward updates parameters in place
    and returns the gradient of the layer's input."""

    def forward(self, h: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]: ...

    def backward(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> torch.Tensor: ...


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``[b, C, H, W]`` (any strides) as a contiguous ``[b, H, W, C]``: free for channels-last."""
    return t.permute(0, 2, 3, 1).contiguous()


def _nchw(h: torch.Tensor) -> torch.Tensor:
    """The channels-last NCHW view of ``[b, H, W, C]`` that torch's conv and pool kernels take."""
    return h.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class _Conv:
    """``nn.Conv2d`` (or ``nn.Conv1d`` as height 1), each device one group of a grouped convolution."""

    weight: str
    bias: str | None
    out_channels: int
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int

    def _weight(self, p: ParamStack, n: int) -> torch.Tensor:
        w = p[self.weight]  # [n, out, in / groups, kh, kw], or [n, out, in / groups, kw] in 1-D
        return w.view(n * self.out_channels, w.shape[2], w.shape[3] if w.dim() == 5 else 1, w.shape[-1])

    def forward(self, h: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]:
        bias = p[self.bias].view(-1) if self.bias is not None else None
        x = _nchw(h)
        out = _aten.convolution(
            x, self._weight(p, n), bias, self.stride, self.padding, self.dilation, False, [0, 0], n * self.groups
        )
        return _nhwc(out), x

    def backward(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> torch.Tensor:
        below = self.update(grad, saved, p, n, lr, grad_input=True)
        assert below is not None
        return below

    def start(self, x: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]:
        """As the first layer: ``x`` [n, b, C, H, W], the data, laid out as ``[b, H, W, n * C]`` first."""
        b, channels, height, width = x.shape[1:]
        return self.forward(x.permute(1, 3, 4, 0, 2).reshape(b, height, width, n * channels).contiguous(), p, n)

    def finish(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> None:
        self.update(grad, saved, p, n, lr, grad_input=False)

    def update(
        self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float, *, grad_input: bool
    ) -> torch.Tensor | None:
        """The SGD update; the input's gradient too unless ``grad_input`` is False (the first layer)."""
        w = self._weight(p, n)
        bias_sizes = [n * self.out_channels] if self.bias is not None else None
        grad_x, grad_w, grad_b = _aten.convolution_backward(
            _nchw(grad),
            saved,
            w,
            bias_sizes,
            self.stride,
            self.padding,
            self.dilation,
            False,
            [0, 0],
            n * self.groups,
            [grad_input, True, self.bias is not None],
        )
        w.sub_(grad_w, alpha=lr)
        if self.bias is not None:
            p[self.bias].view(-1).sub_(grad_b, alpha=lr)
        return _nhwc(grad_x) if grad_input else None


@dataclass(frozen=True)
class _MaxPool:
    """``nn.MaxPool2d`` (or ``nn.MaxPool1d`` as height 1): per channel, so per device already."""

    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    ceil_mode: bool

    def forward(self, h: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]:
        x = _nchw(h)
        out, indices = _aten.max_pool2d_with_indices(
            x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        return _nhwc(out), (x, indices)

    def backward(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> torch.Tensor:
        x, indices = saved
        return _nhwc(
            _aten.max_pool2d_with_indices_backward(
                _nchw(grad), x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, indices
            )
        )


class _ReLU:
    def forward(self, h: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]:
        out = torch.relu(h)
        return out, out

    def backward(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> torch.Tensor:
        return _aten.threshold_backward(grad, saved, 0)


class _Flatten:
    """``[b, H, W, n * C]`` to ``[n, b, C * H * W]`` in ``nn.Flatten``'s (C, H, W) order."""

    def forward(self, h: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]:
        b, height, width, channels = h.shape
        shape = (b, height, width, n, channels // n)
        return h.view(shape).permute(3, 0, 4, 1, 2).reshape(n, b, -1), shape

    def backward(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> torch.Tensor:
        b, height, width, _, channels = saved
        grad = grad.view(n, b, channels, height, width).permute(1, 3, 4, 0, 2)
        return grad.reshape(b, height, width, n * channels)


@dataclass(frozen=True)
class _Linear:
    """``nn.Linear`` on ``[n, b, features]``: one ``baddbmm``, the update fused as in ``_dense_step``."""

    weight: str
    bias: str | None

    def forward(self, h: torch.Tensor, p: ParamStack, n: int) -> tuple[torch.Tensor, Any]:
        w = p[self.weight].transpose(1, 2)
        out = torch.baddbmm(p[self.bias].unsqueeze(1), h, w) if self.bias is not None else torch.bmm(h, w)
        return out, h

    def backward(self, grad: torch.Tensor, saved: Any, p: ParamStack, n: int, lr: float) -> torch.Tensor:
        below = torch.bmm(grad, p[self.weight])  # before W changes
        p[self.weight].baddbmm_(grad.transpose(1, 2), saved, alpha=-lr)
        if self.bias is not None:
            p[self.bias].sub_(grad.sum(1), alpha=lr)
        return below


@dataclass(frozen=True)
class ConvPlan:
    """What :func:`conv_step` runs: the per-sample input shape ``(C, H, W)`` (``H`` 1 in a 1-D stack;
    None: the data has it already), the first convolution, then the other layers in order."""

    input_shape: tuple[int, ...] | None
    one_d: bool
    first: _Conv
    layers: tuple[_Layer, ...]


def _ints(value: Any, one_d: bool, fill: int) -> Pair:
    """A module's size argument as (height, width); a 1-D module's height is ``fill``."""
    values = tuple(value) if isinstance(value, tuple | list) else (value,) * (1 if one_d else 2)
    return (fill, int(values[0])) if one_d else (int(values[0]), int(values[1]))


def _layer(name: str, module: nn.Module, one_d: bool) -> _Layer | None:
    """The layer for one module, or None where this path does not compute exactly what it does."""
    kind = type(module)
    if kind is nn.ReLU:
        return _ReLU()
    if kind is (nn.Conv1d if one_d else nn.Conv2d):
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None  # reflect/circular and 'same'/'valid' padding stay on the generic path
        return _Conv(
            f"{name}.weight",
            f"{name}.bias" if module.bias is not None else None,
            module.out_channels,
            _ints(module.stride, one_d, 1),
            _ints(module.padding, one_d, 0),
            _ints(module.dilation, one_d, 1),
            module.groups,
        )
    if kind is (nn.MaxPool1d if one_d else nn.MaxPool2d):
        assert isinstance(module, nn.MaxPool1d | nn.MaxPool2d)
        if module.return_indices:
            return None
        return _MaxPool(
            _ints(module.kernel_size, one_d, 1),
            _ints(module.stride, one_d, 1),
            _ints(module.padding, one_d, 0),
            _ints(module.dilation, one_d, 1),
            bool(module.ceil_mode),
        )
    if kind is nn.Linear:
        return _Linear(f"{name}.weight", f"{name}.bias" if module.bias is not None else None)
    if kind is nn.Flatten and (module.start_dim, module.end_dim) == (1, -1):
        return _Flatten()
    return None


def conv_plan(model: nn.Module) -> ConvPlan | None:
    """The plan of ``Sequential([Unflatten(1, (C, [H,] W))], Conv, ..., Flatten(), Linear, ...)``:
    convolutions, max-pools and ReLUs, one ``Flatten()``, then Linear layers and ReLUs, every module
    exactly ``nn.Conv2d``/``nn.MaxPool2d`` (or all 1-D: ``nn.Conv1d``/``nn.MaxPool1d``), ``nn.ReLU``,
    ``nn.Flatten`` or ``nn.Linear``, convolutions zero-padded. None for anything else (generic path).

    Classes are compared exactly, as in ``dense_layers``: a subclass may compute something else.
    ``ReLU`` then ``MaxPool`` (dilation 1, so every window holds a real pixel) becomes pool then ReLU:
    ``max(relu(x)) = relu(max(x))``, and both orders send the gradient to the first maximal pixel
    when the maximum is positive and nowhere otherwise.
    """
    if type(model) is not nn.Sequential:
        return None
    named = list(model.named_children())
    input_shape: tuple[int, ...] | None = None
    if named and type(named[0][1]) is nn.Unflatten:
        unflatten = named.pop(0)[1]
        assert isinstance(unflatten, nn.Unflatten)
        input_shape = tuple(int(s) for s in unflatten.unflattened_size)
        if unflatten.dim != 1 or len(input_shape) not in (2, 3):
            return None
    one_d = bool(named) and type(named[0][1]) is nn.Conv1d
    if input_shape is not None:
        if len(input_shape) != (2 if one_d else 3):
            return None
        input_shape = (input_shape[0], 1, input_shape[1]) if one_d else input_shape
    layers = [_layer(name, module, one_d) for name, module in named]
    flatten = [i for i, layer in enumerate(layers) if isinstance(layer, _Flatten)]
    if None in layers or not layers or not isinstance(layers[0], _Conv) or len(flatten) != 1:
        return None
    spatial, flat = layers[: flatten[0]], layers[flatten[0] + 1 :]
    if any(isinstance(layer, _Linear) for layer in spatial) or not all(
        isinstance(layer, _Linear | _ReLU) for layer in flat
    ):
        return None
    ordered = [layer for layer in layers if layer is not None]
    for i in range(len(ordered) - 1):
        below, above = ordered[i], ordered[i + 1]
        if isinstance(below, _ReLU) and isinstance(above, _MaxPool) and above.dilation == (1, 1):
            ordered[i], ordered[i + 1] = above, below
    first = ordered[0]
    assert isinstance(first, _Conv)
    return ConvPlan(input_shape, one_d, first, tuple(ordered[1:]))


def conv_step(
    plan: ConvPlan, params: ParamStack, xb: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor, *, lr: float
) -> None:
    """One SGD step of every device on its mini-batch ``xb`` [D, b, ...], ``params`` updated in place.

    Same arithmetic as autograd on the per-device weighted cross-entropy (``weight`` [D, b]: 1/b on
    the device's valid samples, 0 on padding), device block by device block.
    """
    devices, batch = yb.shape
    blocks = -(-devices * batch // (BLOCK_SAMPLES * torch.get_num_threads()))  # each op is split over the threads
    block = -(-devices // blocks)  # equal blocks: a small last block would cost as much as a full one
    for start in range(0, devices, block):
        rows = slice(start, min(start + block, devices))
        views = {name: t[rows] for name, t in params.items()}
        _block_step(plan, views, xb[rows], yb[rows], weight[rows], lr)


def _block_step(
    plan: ConvPlan, p: ParamStack, xb: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor, lr: float
) -> None:
    n, b = yb.shape
    x = xb.reshape(n, b, *plan.input_shape) if plan.input_shape is not None else xb
    if plan.one_d and plan.input_shape is None:
        x = x.unsqueeze(3)  # [n, b, C, L] -> [n, b, C, 1, L]
    h, first_saved = plan.first.start(x, p, n)
    saved = []
    for layer in plan.layers:
        h, keep = layer.forward(h, p, n)
        saved.append(keep)
    grad = torch.softmax(h, dim=-1)  # d loss / d logits = weight * (p - onehot), as in _dense_step
    grad.scatter_add_(2, yb.unsqueeze(-1), -torch.ones_like(grad[..., :1]))
    grad.mul_(weight.unsqueeze(-1))
    for layer, keep in zip(reversed(plan.layers), reversed(saved), strict=True):
        grad = layer.backward(grad, keep, p, n, lr)
    plan.first.finish(grad, first_saved, p, n, lr)
