"""The aggregation tree: an overlay of aggregators imposed on the devices.

Layer 0 is every device. Layer l >= 1 is a set of aggregators, each a node of
the topology graph (an ordinary device for E-Tree, the server for FedAvg, an
edge server for HierFAVG). Every device has one layer-1 aggregator (its
cluster head), every layer-l aggregator one parent in layer l+1, and the top
layer is a single root (E-Tree paper, Fig. 2). FedAvg is the one-layer tree
whose only aggregator is the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from etree.core.errors import ProtocolError


@dataclass(frozen=True)
class AggregationTree:
    """``heads[l]``: graph node ids of the layer-(l+1) aggregators.

    ``parents[0][d]`` indexes ``heads[0]`` (device d's cluster); ``parents[l][k]``
    indexes ``heads[l]`` (the parent of aggregator k of layer l). ``public``
    lists devices that belong to every layer-1 cluster (E-Tree paper, Fig. 5).
    """

    heads: tuple[np.ndarray, ...]
    parents: tuple[np.ndarray, ...]
    public: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if not self.heads or len(self.heads) != len(self.parents):
            raise ProtocolError("tree: needs one parent array per layer of heads")
        if len(self.heads[-1]) != 1:
            raise ProtocolError(f"tree: the top layer must be one root, got {len(self.heads[-1])} heads")
        for layer, (parent, above) in enumerate(zip(self.parents, self.heads, strict=True)):
            if parent.min(initial=0) < 0 or parent.max(initial=0) >= len(above):
                raise ProtocolError(f"tree: layer {layer} points at a head that does not exist")
            if np.bincount(parent, minlength=len(above)).min() == 0:
                raise ProtocolError(f"tree: a layer-{layer + 1} head has no members")
            if layer + 1 < len(self.parents) and len(self.parents[layer + 1]) != len(above):
                raise ProtocolError(f"tree: layer {layer + 1} parent array does not match its heads")

    @property
    def devices(self) -> int:
        return len(self.parents[0])

    @property
    def depth(self) -> int:
        """Number of aggregation layers above the devices."""
        return len(self.heads)

    @property
    def root(self) -> int:
        return int(self.heads[-1][0])

    def ancestors(self, layer: int) -> np.ndarray:
        """For each device, the index (into ``heads[layer - 1]``) of its layer-``layer`` aggregator."""
        index = self.parents[0]
        for level in range(1, layer):
            index = self.parents[level][index]
        return index

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: per layer, each head and its members."""
        layers = []
        for level, heads in enumerate(self.heads):
            members = [np.flatnonzero(self.parents[level] == k).tolist() for k in range(len(heads))]
            if level > 0:  # members of an upper layer are named by their graph node ids
                members = [[int(self.heads[level - 1][m]) for m in group] for group in members]
            layers.append(
                {
                    "layer": level + 1,
                    "clusters": [
                        {"head": int(h), "members": group} for h, group in zip(heads.tolist(), members, strict=True)
                    ],
                }
            )
        return {
            "root": self.root,
            "depth": self.depth,
            "devices": self.devices,
            "public_nodes": self.public.tolist(),
            "layers": layers,
        }


def star_tree(devices: int, server: int) -> AggregationTree:
    """FedAvg's structure: every device reports to one server node."""
    return AggregationTree(heads=(np.array([server]),), parents=(np.zeros(devices, dtype=np.int64),))
