"""Where aggregators sit: the delay-medoid of a set of nodes (E-Tree paper, Eq. 1).

c_k = argmin_{j in C_k} sum_{i in C_k} d(i, j), with d the shortest-path
latency. Exact for sets up to ``max_candidates`` members; above that only the
members nearest the set's positional centroid are tried as candidates, which
keeps the cost at O(candidates x N) instead of O(|C|^2) Dijkstra rows.
"""

from __future__ import annotations

import numpy as np

from etree.network.model import NetworkModel

MAX_CANDIDATES = 64


def delay_medoid(network: NetworkModel, members: np.ndarray, *, max_candidates: int = MAX_CANDIDATES) -> int:
    """The member with the least total latency to all members (ties: the smallest id)."""
    members = np.sort(np.asarray(members, dtype=np.int64))
    candidates = members
    if len(members) > max_candidates:
        pos = np.array([network.graph.nodes[int(n)]["pos"] for n in members])
        gap = np.linalg.norm(pos - pos.mean(0), axis=1)
        candidates = members[np.sort(np.argsort(gap, kind="stable")[:max_candidates])]
    network.prepare(candidates.tolist())
    totals = np.array([network.latency_s(int(c), members).sum() for c in candidates])
    return int(candidates[int(np.argmin(totals))])
