"""How models flow: protocols (FedAvg, E-Tree, baselines), aggregation trees, simulated network time."""

from etree import fedavg as _fedavg  # noqa: F401  (registers the protocol)
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
