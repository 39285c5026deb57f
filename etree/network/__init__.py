"""The simulated network: clock, conditions, network model, links, placement, heterogeneity.

Time lives in one ``simpy.Environment`` per protocol run (:class:`SimClock`);
a message costs path latency + bytes / bottleneck bandwidth (:class:`NetworkModel`,
over :mod:`topologies.delays`, the one path-cost module).
"""

from etree.network.clock import SimClock
from etree.network.conditions import Crash, NetworkConditions
from etree.network.links import LinkLedger, LinkLoad
from etree.network.model import NetworkModel, fifo_link_arrivals
from etree.network.placement import delay_medoid

__all__ = [
    "Crash",
    "LinkLedger",
    "LinkLoad",
    "NetworkConditions",
    "NetworkModel",
    "SimClock",
    "delay_medoid",
    "fifo_link_arrivals",
]
