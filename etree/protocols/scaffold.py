"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 with option II): control variates correct each device's drift.

The server holds a control variate c, every device i its own c_i (both start at 0). A sampled
device trains from the server's model x with every SGD step corrected by ``c - c_i``
(Algorithm 1, line 10; ``clients.classification.training``), then updates its control by
option II (line 12): ``c_i+ = c_i - c + (x - y_i) / (K_i lr)``, K_i being its number of local
steps (``local_epochs * ceil(n_i / batch_size)``; the paper's K, per device when data sizes
differ). The server takes ``x += global_lr * mean_S(y_i - x)`` and
``c += (|S| / N) mean_S(c_i+ - c_i)`` over the updates S it received (lines 16-17), N being the
devices that may train (all of them, less a server that is a device and does not train).

The c_i are private: kept (and checkpointed) by their devices, never sent. What is sent is what
the paper sends: each participant uploads (Δy_i, Δc_i) and the server broadcasts (x, c), two
models per message, so bytes and transfer times count both (``models_per_message = 2``).

Choices the paper leaves open: a device whose upload is lost (dropout in flight, a deadline, a
crashed server) keeps its old c_i, as if it had not trained, so c stays the mean of the c_i the
server knows; a device without data takes no step and keeps its c_i. Star only (see
``etree.trees.star``): the paper defines c and x at one server, not at the heads of a tree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clients.params import ParamStack, replicate, select
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import stack_like
from etree.engine.protocol import Protocol
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.trees.star import StarProtocol, scaled_update
from etree.trees.tree import AggregationTree


class ScaffoldProtocol(StarProtocol):
    """SCAFFOLD on FedAvg's star; ``control`` is c (one model), ``device_controls`` the c_i."""

    method = "SCAFFOLD"
    models_per_message = 2  # up: (Δy, Δc); down: (x, c)

    def __init__(
        self,
        label: str,
        *,
        server: str | int,
        participation: float,
        server_trains: bool,
        global_lr: float,
    ) -> None:
        super().__init__(label, server=server, participation=participation, weighted=False, server_trains=server_trains)
        if not global_lr > 0:
            raise ProtocolError(f"protocols.{label}.global_lr: got {global_lr}; must be > 0 (the paper's eta_g, 1)")
        self._global_lr = float(global_lr)

    def setup(self, workload: Workload) -> None:
        super().setup(workload)
        zero = {name: torch.zeros_like(t) for name, t in workload.initial.items()}
        self.control = replicate(zero, 1)
        self.device_controls = replicate(zero, workload.devices)

    def _attach(self, tree: AggregationTree) -> None:
        super()._attach(tree)
        heads = np.unique(np.concatenate(tree.heads))
        idle = 0 if self._aggregators_train else int((heads < self.workload.devices).sum())  # a server device
        self.eligible = max(1, self.workload.devices - idle)  # the paper's N: the devices that may train

    def _train(self, active: torch.Tensor, delivered: torch.Tensor, round_index: int) -> ParamStack:
        start = select(self.params, active)
        correction = {name: self.control[name] - self.device_controls[name][active] for name in start}
        trained = self.workload.train_devices(start, active, round_index, correction=correction)
        members = active[delivered]
        if len(members):
            everyone = bool(delivered.all())
            steps = self.steps[members].to(torch.float32)
            scale = torch.where(steps > 0, 1.0 / (steps * self.workload.train.lr), 0.0)
            for name, x in start.items():  # option II: c_i+ - c_i = (x - y_i) / (K_i lr) - c
                y = trained[name] if everyone else trained[name][delivered]
                shape = (-1, *[1] * (y.dim() - 1))
                delta = torch.sub(x if everyone else x[delivered], y).mul_(scale.view(shape)).sub_(self.control[name])
                if not bool((steps > 0).all()):  # a device without data took no step: its c_i stays
                    delta.mul_((steps > 0).to(delta.dtype).view(shape))
                self.device_controls[name].index_add_(0, members, delta)
                self.control[name] = self.control[name] + delta.sum(0, keepdim=True) / self.eligible
        return trained if self._global_lr == 1.0 else scaled_update(start, trained, self._global_lr)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"control": self.control, "device_controls": self.device_controls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        initial, devices = self.workload.initial, self.workload.devices
        self.control = stack_like(state["control"], initial, "control", rows=1)
        self.device_controls = stack_like(state["device_controls"], initial, "device_controls", rows=devices)


@register_protocol("scaffold")
def scaffold(
    label: str,
    *,
    server: str | int = "auto",
    participation: float = 1.0,
    server_trains: bool = False,
    global_lr: float = 1.0,
) -> Protocol:
    """SCAFFOLD (Karimireddy et al., ICML 2020), option II control variates, on FedAvg's star;
    ``global_lr`` is the server step size eta_g (the paper's experiments use 1); the server mean is
    unweighted, as in the paper. ``server``, ``participation`` and ``server_trains`` as for fedavg."""
    return ScaffoldProtocol(
        label, server=server, participation=participation, server_trains=server_trains, global_lr=global_lr
    )
