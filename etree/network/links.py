"""Per-link accounting: how many messages and bytes crossed each link of the topology.

Protocols record messages by endpoints only (``record(source, targets)``,
cheap, once per aggregator per round); the routing onto links is done once at
the end (``loads``), over each source's shortest-path tree, so the hot path
pays nothing per hop. A message and its reply take the same path (the graph
is undirected and both are routed on the aggregator's tree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from etree.network.model import NetworkModel


@dataclass(frozen=True)
class LinkLoad:
    """Messages and bytes per link, links in ``graph.edges`` order (``ends[i] = (u, v)``)."""

    ends: np.ndarray
    messages: np.ndarray
    bytes_sent: np.ndarray


class LinkLedger:
    """Message counts per (source, target) pair of one protocol run, all of one size."""

    def __init__(self, network: NetworkModel, message_bytes: int) -> None:
        self.network = network
        self.message_bytes = message_bytes
        self._counts: dict[int, np.ndarray] = {}

    def record(self, source: int, targets: np.ndarray) -> None:
        """One message between ``source`` and each of ``targets`` (repeats count; itself is free)."""
        row = self._counts.get(int(source))
        if row is None:
            row = self._counts[int(source)] = np.zeros(self.network.nodes, dtype=np.int64)
        np.add.at(row, np.asarray(targets, dtype=np.int64), 1)

    def loads(self) -> LinkLoad:
        messages = np.zeros(len(self.network.link_bandwidth))
        for source in sorted(self._counts):
            messages += self.network.path_link_counts(source, self._counts[source])
        return LinkLoad(self.network.link_ends, messages, messages * self.message_bytes)
