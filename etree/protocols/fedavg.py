"""FedAvg in-engine (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017): every sampled device trains
from the global model and one server averages the results.

It is the one-layer aggregation tree whose head is the server, so it runs on
the same engine as E-Tree and differs from it only in structure.
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
def fedavg(label: str, *, server: str | int = "auto", participation: float = 1.0, weighted: bool = False) -> Protocol:
    """FedAvg; ``weighted=False`` is the unweighted mean of the E-Tree paper's FL baseline."""

    def build(workload: Workload, network: NetworkModel) -> AggregationTree:
        return star_tree(workload.devices, choose_server(workload, network, server, label))

    return TreeProtocol(label, build, weighted=weighted, participation=participation)
