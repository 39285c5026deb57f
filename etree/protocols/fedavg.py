"""FedAvg in-engine (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017): every sampled device trains
from the global model and one server averages the results.

It is the one-layer aggregation tree whose head is the server, so it runs on
the same engine as E-Tree and differs from it only in structure.

The server (``etree.trees.servers``) is the topology's cloud node, else the
authors' device with the smallest largest delay. The E-Tree authors' FL master
(``FederatedLearningProtocol``) only aggregates: the other N-1 nodes train. So
by default (``server_trains=False``) a server that is a device neither trains
nor joins the average; it receives the global model like every device. A cloud
server is no device, so the option changes nothing there.
"""

from __future__ import annotations

from etree.engine.protocol import Protocol
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.hierarchical import LocalObjective, TreeProtocol
from etree.trees.server_opt import server_optimizer
from etree.trees.servers import choose_server
from etree.trees.tree import AggregationTree, star_tree


@register_protocol("fedavg")
def fedavg(
    label: str,
    *,
    server: str | int = "auto",
    participation: float = 1.0,
    weighted: bool = False,
    server_trains: bool = False,
    local: LocalObjective = "sgd",
    mu: float = 0.01,
    server_opt: str = "none",
    server_lr: float | None = None,
    server_momentum: float | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    tau: float | None = None,
    item_merge: str = "touched",
) -> Protocol:
    """FedAvg; ``weighted=False`` is the unweighted mean of the E-Tree paper's FL baseline;
    ``server_trains=True`` lets a server that is a device train and join the average too.
    ``local = "fedprox"`` is FedProx (Li et al., MLSys 2020): local SGD on the loss plus
    mu/2 ||w - w_global||^2, with ``mu``.
    ``server_opt`` steps the root with a server optimizer (``"avgm"``: FedAvgM, Hsu et al. 2019;
    ``"adam"``, ``"yogi"``, ``"adagrad"``: Reddi et al., ICLR 2021) tuned by ``server_lr``,
    ``server_momentum``, ``beta1``, ``beta2``, ``tau`` (None: the kind's default, Flower's;
    ``etree.trees.server_opt``).
    ``item_merge`` (recommenders): ``"touched"`` (default) sends each device's touched item rows and
    averages each row over its senders (FCF), ``"dense"`` averages whole item tables
    (``etree.trees.sparse_rows``).
    """
    opt = server_optimizer(
        label, server_opt, lr=server_lr, momentum=server_momentum, beta1=beta1, beta2=beta2, tau=tau
    )

    def build(workload: Workload, network: NetworkModel) -> AggregationTree:
        return star_tree(workload.devices, choose_server(workload, network, server, label))

    return TreeProtocol(
        label,
        build,
        weighted=weighted,
        participation=participation,
        aggregators_train=server_trains,
        local=local,
        mu=mu,
        server_opt=opt,
        item_merge=item_merge,
    )
