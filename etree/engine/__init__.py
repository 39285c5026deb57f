"""The protocol engine: the protocol interface, the workload, the one round loop, checkpoints, the registry."""

from etree.engine.loop import run_protocol
from etree.engine.protocol import Protocol, Record, RoundCost
from etree.engine.registry import PROTOCOLS, register_protocol
from etree.engine.workload import Workload

__all__ = ["PROTOCOLS", "Protocol", "Record", "RoundCost", "Workload", "register_protocol", "run_protocol"]
