"""Server optimizers for the root of an aggregation tree: FedAvgM and FedOpt (FedAdam, FedYogi, FedAdagrad).

The root treats ``Delta_t = aggregate - x_t`` as a pseudo-gradient, ``x_t`` being the model it
last pushed down (the initial model before its first aggregation), and steps ``x_t`` with a
server optimizer instead of taking the aggregate as it is (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2; Hsu, Qi, Brown, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification", arXiv:1909.06335, 2019, for FedAvgM).

The arithmetic is Flower 1.41's (``flwr.serverapp.strategy``), so an in-engine run matches the
``flower`` protocol's strategy step for step; where Flower is not the papers' letter:

* ``avgm`` (``FedAvgM.aggregate_train``): ``m = beta m + (x_t - aggregate)`` from ``m = 0`` (no
  ``1 - beta`` dampening, PyTorch's SGD convention), ``x_{t+1} = x_t - eta m``; with momentum 0
  and ``eta = 1`` Flower skips the step and keeps the aggregate as it is, and so do we.
* FedOpt (``FedOpt._compute_deltat_and_mt``): ``m`` and ``v`` start at 0 at the first step (the
  paper asks ``v_{-1} >= tau^2``), ``m = beta1 m + (1 - beta1) Delta_t``; FedAdagrad fixes
  ``beta1 = 0`` (the paper's Algorithm 2 keeps a ``beta1``; ours is an option, default 0).
* ``adam``: ``v = beta2 v + (1 - beta2) Delta_t^2`` and ``eta`` is scaled by
  ``sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))`` with ``t`` the 1-based step: Adam's bias
  correction (Kingma & Ba 2015), shifted by one round, that Algorithm 2 does not have. ``t``
  counts root steps, which is Flower's server round when the root aggregates every round (FedAvg).
* ``yogi``: ``v = v - (1 - beta2) Delta_t^2 sign(v - Delta_t^2)``; ``adagrad``: ``v = v + Delta_t^2``.
* every FedOpt kind: ``x_{t+1} = x_t + eta m / (sqrt(v) + tau)``.

Flower computes FedAdam in float64 (numpy promotes its float64 scale); here every tensor keeps
the model's dtype, a difference far below the cross-check's 1e-5.

Defaults are Flower 1.41's: ``adam`` eta 0.1, beta1 0.9, beta2 0.99, tau 1e-3; ``yogi`` eta
0.01, beta1 0.9, beta2 0.99, tau 1e-3; ``adagrad`` eta 0.1, tau 1e-3 (the older
``flwr.server.strategy`` had tau 1e-9 for FedAdam and FedAdagrad); ``avgm`` eta 1.0 and, our
choice, momentum 0.9: Flower's default 0 makes FedAvgM plain FedAvg, and 0.9 is the value
Hsu et al. and Reddi et al. (their FedAvgM baseline) use.

Everything here is a pure function of tensors: a step returns a new ``ServerOptState`` and
changes nothing it is given, so the root can also ask what a step would give without taking it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from clients.params import ParamStack
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import CheckpointError, expect, stack_like

KINDS = ("none", "avgm", "adam", "yogi", "adagrad")

# kind -> the options it takes and their defaults (Flower 1.41's, see the module docstring)
DEFAULTS: dict[str, dict[str, float]] = {
    "avgm": {"lr": 1.0, "momentum": 0.9},
    "adam": {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "yogi": {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "adagrad": {"lr": 0.1, "beta1": 0.0, "tau": 1e-3},
}
# option -> the protocol option that sets it, whether a value is valid, and the rule
_OPTIONS = {
    "lr": ("server_lr", lambda v: v > 0, "must be > 0"),
    "momentum": ("server_momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta1": ("beta1", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta2": ("beta2", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "tau": ("tau", lambda v: v > 0, "must be > 0"),
}


@dataclass(frozen=True)
class ServerOptimizer:
    """A server optimizer and its hyper-parameters (options a kind does not use stay 0)."""

    kind: str
    lr: float
    momentum: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.0
    tau: float = 0.0


@dataclass(frozen=True)
class ServerOptState:
    """What the root carries between its steps: its model ``x_t`` (a stack of one), the moments
    ``m`` (every kind) and ``v`` (FedOpt; empty for ``avgm``), and how many steps it took."""

    model: ParamStack
    m: ParamStack
    v: ParamStack
    steps: int = 0


def server_optimizer(
    label: str,
    kind: str,
    *,
    lr: float | None = None,
    momentum: float | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    tau: float | None = None,
) -> ServerOptimizer | None:
    """The optimizer a tree protocol's options name (None for ``"none"``); an option left None takes
    the kind's default, and an option the kind does not use is refused rather than ignored."""
    if kind not in KINDS:
        raise ProtocolError(f"protocols.{label}.server_opt: got {kind!r}; choose one of: {', '.join(KINDS)}")
    given = {"lr": lr, "momentum": momentum, "beta1": beta1, "beta2": beta2, "tau": tau}
    used = DEFAULTS.get(kind, {})
    values: dict[str, float] = {}
    for name, value in given.items():
        option, valid, rule = _OPTIONS[name]
        if value is None:
            if name in used:
                values[name] = used[name]
            continue
        if name not in used:
            if kind == "none":
                raise ProtocolError(
                    f"protocols.{label}.{option}: got {value!r}; it sets a server optimizer and server_opt is "
                    f"'none': set server_opt to one of {', '.join(KINDS[1:])}"
                )
            takers = " or ".join(repr(k) for k, defaults in DEFAULTS.items() if name in defaults)
            raise ProtocolError(f"protocols.{label}.{option}: got {value!r}; only server_opt = {takers} uses it")
        if not valid(value):
            raise ProtocolError(f"protocols.{label}.{option}: got {value!r}; {rule}")
        values[name] = float(value)
    return None if kind == "none" else ServerOptimizer(kind, **values)


def initial_state(opt: ServerOptimizer, model: ParamStack) -> ServerOptState:
    """The root before its first step: the initial model (a stack of one), zero moments."""
    zeros = {name: torch.zeros_like(tensor) for name, tensor in model.items()}
    second = {} if opt.kind == "avgm" else {name: torch.zeros_like(tensor) for name, tensor in model.items()}
    return ServerOptState({name: tensor.clone() for name, tensor in model.items()}, zeros, second)


def server_step(opt: ServerOptimizer, state: ServerOptState, aggregate: ParamStack) -> ServerOptState:
    """One root step from the aggregate of what it heard (a stack of one); the new model is the
    returned state's ``model``. Flower 1.41's arithmetic (see the module docstring)."""
    steps = state.steps + 1
    if opt.kind == "avgm":
        if opt.momentum == 0 and opt.lr == 1:  # Flower's FedAvgM: no server optimization, the aggregate as is
            return ServerOptState({k: t.clone() for k, t in aggregate.items()}, state.m, state.v, steps)
        m = {k: opt.momentum * state.m[k] + (x - aggregate[k]) for k, x in state.model.items()}
        model = {k: x - opt.lr * m[k] for k, x in state.model.items()}
        return ServerOptState(model, m, state.v, steps)
    delta = {k: aggregate[k] - x for k, x in state.model.items()}
    m = {k: opt.beta1 * state.m[k] + (1 - opt.beta1) * d for k, d in delta.items()}
    if opt.kind == "adam":
        v = {k: opt.beta2 * state.v[k] + (1 - opt.beta2) * d**2 for k, d in delta.items()}
        eta = opt.lr * math.sqrt(1 - opt.beta2 ** (steps + 1.0)) / (1 - opt.beta1 ** (steps + 1.0))
    elif opt.kind == "yogi":
        v = {k: state.v[k] - (1 - opt.beta2) * d**2 * torch.sign(state.v[k] - d**2) for k, d in delta.items()}
        eta = opt.lr
    else:  # adagrad
        v = {k: state.v[k] + d**2 for k, d in delta.items()}
        eta = opt.lr
    model = {k: x + eta * m[k] / (torch.sqrt(v[k]) + opt.tau) for k, x in state.model.items()}
    return ServerOptState(model, m, v, steps)


# -- checkpoints -------------------------------------------------------------
def opt_state_dict(state: ServerOptState) -> dict[str, Any]:
    """The state as checkpoint data (tensors and an int)."""
    return {"model": state.model, "m": state.m, "v": state.v, "steps": state.steps}


def opt_state_from_dict(value: Any, opt: ServerOptimizer, like: ParamStack, where: str) -> ServerOptState:
    """``opt_state_dict``'s state, checked against the shared parameters ``like`` (one model)."""
    saved = expect(value, dict, where)
    steps = expect(saved.get("steps"), int, f"{where}.steps")
    if steps < 0:
        raise CheckpointError(f"{where}.steps: got {steps}, must be >= 0")
    v_like = {} if opt.kind == "avgm" else like
    return ServerOptState(
        stack_like(saved.get("model"), like, f"{where}.model", rows=1),
        stack_like(saved.get("m"), like, f"{where}.m", rows=1),
        stack_like(saved.get("v"), v_like, f"{where}.v", rows=1),
        steps,
    )
