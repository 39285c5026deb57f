"""How models flow: protocols (FedAvg, E-Tree, baselines), aggregation trees, simulated network time."""

from etree import baselines as _baselines  # noqa: F401  (registers individual, grouped)
from etree import centralised as _centralised  # noqa: F401  (registers centralised, popularity)
from etree import etree_learning as _etree_learning  # noqa: F401  (registers etree)
from etree import fedavg as _fedavg  # noqa: F401  (registers the protocol)
from etree import flower_fedavg as _flower_fedavg  # noqa: F401  (registers flower; imports flwr lazily)
from etree import gossip as _gossip  # noqa: F401  (registers the protocol)
from etree import hierfavg as _hierfavg  # noqa: F401  (registers the protocol)
from etree.errors import ProtocolError
from etree.protocol import Protocol, Record, RoundCost, Workload, run_protocol
from etree.registry import PROTOCOLS, make_protocol, register_protocol

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "ProtocolError",
    "Record",
    "RoundCost",
    "Workload",
    "make_protocol",
    "register_protocol",
    "run_protocol",
]
