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
from etree.trees.hierarchical import TreeProtocol
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
) -> Protocol:
    """FedAvg; ``weighted=False`` is the unweighted mean of the E-Tree paper's FL baseline;
    ``server_trains=True`` lets a server that is a device train and join the average too."""

    def build(workload: Workload, network: NetworkModel) -> AggregationTree:
        return star_tree(workload.devices, choose_server(workload, network, server, label))

    return TreeProtocol(label, build, weighted=weighted, participation=participation, aggregators_train=server_trains)
