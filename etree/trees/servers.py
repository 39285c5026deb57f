"""Where a star protocol's server sits (FedAvg, Flower, centralised training).

Without a cloud node the default is the authors' rule (their simulator's
``findParameterServerId``): the device whose farthest device is nearest, the
delay-centre. ``"medoid"`` takes Eq. 1's delay-medoid instead (least total delay),
``"cloud"`` the topology's cloud node, and an integer names a node.
"""

from __future__ import annotations

import numpy as np

from etree.core.errors import ProtocolError
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.network.placement import delay_centre, delay_medoid

SERVER_RULES = ("auto", "centre", "medoid", "cloud")


def choose_server(workload: Workload, network: NetworkModel, server: str | int, label: str = "fedavg") -> int:
    """The server node: ``"auto"`` is the cloud node if the topology has one, else the delay-centre."""
    graph = workload.graph
    field = f"protocols.{label}.server"
    if isinstance(server, str):
        if server not in SERVER_RULES:
            raise ProtocolError(f"{field}: got {server!r}; choose one of: {', '.join(SERVER_RULES)}, or a node id")
        clouds = sorted(n for n, role in graph.nodes(data="role") if role == "cloud")
        if server == "cloud" and not clouds:
            raise ProtocolError(f"{field}: 'cloud' needs a topology with a cloud node (edge_cloud); use 'auto'")
        if clouds and server in ("auto", "cloud"):
            return int(clouds[0])
        devices = np.arange(workload.devices)
        return delay_medoid(network, devices) if server == "medoid" else delay_centre(network, devices)
    if isinstance(server, bool) or not isinstance(server, int) or not 0 <= server < graph.number_of_nodes():
        raise ProtocolError(f"{field}: got {server!r}; use 'auto' or a node id in 0..{graph.number_of_nodes() - 1}")
    return server
