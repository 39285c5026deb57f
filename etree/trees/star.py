"""Star protocols whose server does more than average the models: SCAFFOLD and FedNova.

Both run on the tree engine exactly as FedAvg does (``etree.protocols.fedavg``): a one-layer tree
whose head is the server (``etree.trees.servers.choose_server``), timed and faulted by
``etree.trees.timing``, the root aggregating and pushing its model down every round. They differ
from FedAvg only in what the devices upload (``_train``) and in how the root combines it.

The root's step is computed per upload, before the engine's (weighted) mean: every device starts a
round from the server's model x (all of them hold what the root pushed last), so a server step
``x + s_i (y_i - x)`` averaged over the received uploads is the mean the engine already takes
(``scaled_update``). With ``s_i = 1`` that is FedAvg, bit for bit.

Star only: the papers define the server step on one global model every round, and a tree that
averages clusters between root rounds has no model x that every device started from.
Classifiers only (a recommender's sparse updates take no correction), and late uploads kept for
the next round (``[network] late = "stale"``) are refused: they were computed from an older x.
"""

from __future__ import annotations

import torch

from clients.params import ParamStack
from clients.train_config import local_steps
from etree.core.errors import ProtocolError
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.hierarchical import TreeProtocol
from etree.trees.servers import choose_server
from etree.trees.tree import AggregationTree, star_tree


class StarProtocol(TreeProtocol):
    """FedAvg's star (server placement, ``participation``, ``weighted``, ``server_trains`` as in
    ``fedavg``) for a server step that subclasses put into ``_train``; ``steps`` holds each
    device's number of local SGD steps per round (``clients.train_config.local_steps``)."""

    method = "a star protocol"  # named in the errors

    def __init__(
        self, label: str, *, server: str | int, participation: float, weighted: bool, server_trains: bool
    ) -> None:
        def build(workload: Workload, network: NetworkModel) -> AggregationTree:
            return star_tree(workload.devices, choose_server(workload, network, server, label))

        super().__init__(label, build, weighted=weighted, participation=participation, aggregators_train=server_trains)

    def setup(self, workload: Workload) -> None:
        if workload.recommender:
            raise ProtocolError(
                f"protocols.{self.label}: {self.method} trains classifiers only; a recommender's sparse row "
                f"updates take no server step here: use fedavg"
            )
        if workload.network.late == "stale" and workload.network.deadline_s > 0:
            raise ProtocolError(
                f"network.late: got 'stale'; {self.method} (protocol {self.label!r}) cannot use an upload computed "
                f"from an older model: use late = 'drop'"
            )
        super().setup(workload)

    def _attach(self, tree: AggregationTree) -> None:
        super()._attach(tree)
        self.steps = torch.from_numpy(local_steps(self.workload.data.counts.numpy(), self.workload.train))


def scaled_update(start: ParamStack, trained: ParamStack, factor: torch.Tensor | float) -> ParamStack:
    """``start + factor * (trained - start)`` per device row (``factor``: a number or one per row),
    written ``trained + (factor - 1) (trained - start)`` so that a factor of 1 gives ``trained``
    bit for bit."""
    out: ParamStack = {}
    for name, y in trained.items():
        scale = factor - 1 if isinstance(factor, float) else (factor - 1).to(y.dtype).view(-1, *[1] * (y.dim() - 1))
        out[name] = y + scale * (y - start[name])
    return out
