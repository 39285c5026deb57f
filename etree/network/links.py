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
    """Message counts and bytes per (source, target) pair of one protocol run (``message_bytes`` each,
    unless a message says its own size: a sparse recommender's item rows)."""

    def __init__(self, network: NetworkModel, message_bytes: int) -> None:
        self.network = network
        self.message_bytes = message_bytes
        self._counts: dict[int, np.ndarray] = {}
        self._bytes: dict[int, np.ndarray] = {}

    def record(self, source: int, targets: np.ndarray, nbytes: int | np.ndarray | None = None) -> None:
        """One message between ``source`` and each of ``targets`` (repeats count; itself is free), of
        ``nbytes`` bytes each (one size, or one per target; default ``message_bytes``)."""
        row = self._counts.get(int(source))
        if row is None:
            row = self._counts[int(source)] = np.zeros(self.network.nodes, dtype=np.int64)
            self._bytes[int(source)] = np.zeros(self.network.nodes, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.int64)
        np.add.at(row, targets, 1)
        size = self.message_bytes if nbytes is None else nbytes
        np.add.at(self._bytes[int(source)], targets, np.broadcast_to(np.asarray(size, dtype=np.float64), targets.shape))

    def loads(self) -> LinkLoad:
        messages = np.zeros(len(self.network.link_bandwidth))
        sent = np.zeros(len(self.network.link_bandwidth))
        for source in sorted(self._counts):
            messages += self.network.path_link_counts(source, self._counts[source])
            sent += self.network.path_link_counts(source, self._bytes[source])
        return LinkLoad(self.network.link_ends, messages, sent)
