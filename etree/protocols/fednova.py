"""FedNova (Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020, Eq. 6-7 with plain local SGD): normalized
averaging, so devices that take more local steps do not pull the model toward their own objective.

Device i takes tau_i = ``local_epochs * ceil(n_i / batch_size)`` SGD steps from the server's model
x to y_i; its normalized update is d_i = (x - y_i) / tau_i (the paper's a_i^T G_i / ||a_i||_1
times the learning rate: for plain SGD a_i is all ones, ||a_i||_1 = tau_i). The server takes
``x_new = x - tau_eff * sum_i p_i d_i`` with ``tau_eff = sum_i p_i tau_i``, over the updates it
received, p_i = n_i / sum_S n_j (``weighted=True``, the paper's p_i = n_i / n renormalized over the
received ones, our choice under partial participation and loss) or 1 / |S| (``weighted=False``).
With equal step counts tau_eff / tau_i = 1 and this is FedAvg, bit for bit.

A device without data (tau_i = 0) has no normalized update: it counts as d_i = 0. Star only (see
``etree.trees.star``): the paper normalizes at one server, per round.
"""

from __future__ import annotations

import torch

from clients.params import ParamStack, select
from etree.engine.protocol import Protocol
from etree.engine.registry import register_protocol
from etree.trees.star import StarProtocol, scaled_update


class FedNovaProtocol(StarProtocol):
    """FedNova on FedAvg's star: each upload is x + (tau_eff / tau_i)(y_i - x), whose p-weighted
    mean is the paper's x - tau_eff sum_i p_i d_i."""

    method = "FedNova"

    def _train(self, active: torch.Tensor, delivered: torch.Tensor, round_index: int) -> ParamStack:
        start = select(self.params, active)
        trained = super()._train(active, delivered, round_index)
        tau = self.steps[active].to(torch.float64)
        counts = self.workload.data.counts[active]
        p = (counts if self._weighted else torch.ones(len(active))).to(torch.float64)[delivered]
        if not bool(p.sum() > 0):  # the server hears nobody (or only devices without data): no step
            return trained
        tau_eff = (p * tau[delivered]).sum() / p.sum()  # exact for equal tau_i: integer sums over their count
        factor = torch.where(tau > 0, tau_eff / tau.clamp(min=1.0), 0.0)
        return scaled_update(start, trained, factor)


@register_protocol("fednova")
def fednova(
    label: str,
    *,
    server: str | int = "auto",
    participation: float = 1.0,
    weighted: bool = True,
    server_trains: bool = False,
) -> Protocol:
    """FedNova (Wang et al., NeurIPS 2020) with plain local SGD, on FedAvg's star; ``weighted=True``
    is the paper's p_i = n_i / n (``False``: uniform). Other options as for fedavg."""
    return FedNovaProtocol(
        label, server=server, participation=participation, weighted=weighted, server_trains=server_trains
    )
