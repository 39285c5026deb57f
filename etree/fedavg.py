"""FedAvg in-engine (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017): every sampled device trains
from the global model and one server averages the results.

It is the one-layer aggregation tree whose head is the server, so it runs on
the same engine as E-Tree and differs from it only in structure.
"""

from __future__ import annotations

import numpy as np

from etree.errors import ProtocolError
from etree.hierarchical import TreeProtocol
from etree.network import NetworkModel
from etree.placement import delay_medoid
from etree.protocol import Protocol, Workload
from etree.registry import register_protocol
from etree.tree import AggregationTree, star_tree


def choose_server(workload: Workload, network: NetworkModel, server: str | int, label: str = "fedavg") -> int:
    """The server node: ``"auto"`` takes the cloud node if the topology has one, else the
    delay-medoid of the devices (the authors' FL code uses a fixed device as master)."""
    graph = workload.graph
    if server == "auto":
        clouds = sorted(n for n, role in graph.nodes(data="role") if role == "cloud")
        if clouds:
            return int(clouds[0])
        return delay_medoid(network, np.arange(workload.devices))
    if isinstance(server, bool) or not isinstance(server, int) or not 0 <= server < graph.number_of_nodes():
        raise ProtocolError(
            f"protocols.{label}.server: got {server!r}; use 'auto' or a node id in 0..{graph.number_of_nodes() - 1}"
        )
    return server


@register_protocol("fedavg")
def fedavg(label: str, *, server: str | int = "auto", participation: float = 1.0, weighted: bool = False) -> Protocol:
    """FedAvg; ``weighted=False`` is the unweighted mean of the E-Tree paper's FL baseline."""

    def build(workload: Workload, network: NetworkModel) -> AggregationTree:
        return star_tree(workload.devices, choose_server(workload, network, server, label))

    return TreeProtocol(label, build, weighted=weighted, participation=participation)
