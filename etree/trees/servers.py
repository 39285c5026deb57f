"""Where a star protocol's server sits: a node the spec names, or the delay-medoid of all devices (Eq. 1)."""

from __future__ import annotations

import numpy as np

from etree.core.errors import ProtocolError
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.network.placement import delay_medoid


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
