"""Where aggregators sit: the delay-medoid of a set of nodes (E-Tree paper, Eq. 1).

c_k = argmin_{j in C_k} sum_{i in C_k} d(i, j), with d the shortest-path latency
(ties: the smallest id). Exact for a set of any size, and never an
``|C| x |C|`` search when the set is large: by the triangle inequality, from any
landmark node L, ``sum_i d(j, i) >= sum_i |d(L, i) - d(L, j)|`` (the lower bound
of Newling & Fleuret's trimed, "A Sub-Quadratic Exact Medoid Algorithm",
AISTATS 2017). The bound of every member comes from a few landmark rows; members
are then scored exactly in order of their bound, a batch of Dijkstra rows at a
time, until the next bound exceeds the best total found. Positions are never
used: on graphs whose coordinates are for drawing only, the medoid is still the
medoid. A search spends at most ``MAX_EXACT_ROWS`` exact rows: every set of that
size or less gets its exact medoid, and so does a larger one whose bound closes
within the budget (a compact cluster); otherwise the result is the best of the
``MAX_EXACT_ROWS`` members with the lowest bounds (a choice made by the graph, not
by positions), which keeps a 100,000-device fleet's medoids affordable.

Every Dijkstra is confined to the ball of radius 3R around the first landmark
(R: its farthest member), with a cut-off at 2R: no two members are farther
apart than 2R, and every node on such a path lies within 3R of the landmark.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from etree.network.model import NetworkModel

BATCH = 64  # members scored exactly per Dijkstra batch
MAX_EXACT_ROWS = 1024  # exact rows a search may spend; sets larger than this are exact when the bound closes
LANDMARKS = 4  # rows behind the lower bound: the given centre or first member, then farthest-point picks
_SLACK = 1e-9  # relative slack against round-off in summed latencies


def delay_medoid(network: NetworkModel, members: np.ndarray) -> int:
    """The member of ``members`` with the least total latency to all of them, on ``network``'s graph."""
    return medoid(network.latency_graph, members)


def medoid(latency: sparse.csr_array, members: np.ndarray, centre_row: np.ndarray | None = None) -> int:
    """Eq. 1 on a symmetric latency csgraph (:func:`topologies.latency_csgraph`), exactly.

    ``centre_row`` (delays from a node near the set, e.g. its old centre) saves the
    first landmark's Dijkstra.
    """
    members = np.unique(np.asarray(members, dtype=np.int64))
    if len(members) == 1:
        return int(members[0])
    if centre_row is None:
        centre_row = _rows(latency, members[:1])[0]
    reach = float(centre_row[members].max())
    if not np.isfinite(reach):
        raise ValueError("medoid: the members are not connected")
    ball = np.flatnonzero(centre_row <= 3 * reach * (1 + _SLACK) + 1e-12)
    graph = latency[ball][:, ball] if len(ball) < latency.shape[0] else latency
    local = np.searchsorted(ball, members)
    limit = 2 * reach * (1 + _SLACK) + 1e-12

    if len(members) <= BATCH:
        totals = _rows(graph, local, limit)[:, local].sum(1)
        return int(members[int(np.argmin(totals))])
    # trimed: every exact row is also a landmark that tightens the bound of every other member
    bound = _lower_bounds(graph, local, centre_row[members], limit)
    open_ = np.ones(len(members), dtype=bool)
    best_total, best = np.inf, -1
    while open_.any() and len(members) - open_.sum() < MAX_EXACT_ROWS:
        waiting = np.flatnonzero(open_)
        chunk = waiting[np.lexsort((members[waiting], bound[waiting]))[:BATCH]]
        if bound[chunk[0]] > best_total * (1 + _SLACK) + 1e-12:
            break
        rows = _rows(graph, local[chunk], limit)[:, local]
        open_[chunk] = False
        for row, total in zip(chunk.tolist(), rows.sum(1).tolist(), strict=True):
            if total < best_total or (total == best_total and members[row] < members[best]):
                best_total, best = total, row
        bound = np.maximum(bound, _abs_deviation_sums(rows).max(0))
    return int(members[best])


def _rows(graph: sparse.csr_array, sources: np.ndarray, limit: float = np.inf) -> np.ndarray:
    return np.atleast_2d(csgraph.dijkstra(graph, directed=True, indices=sources, limit=limit))


def _lower_bounds(graph: sparse.csr_array, local: np.ndarray, first: np.ndarray, limit: float) -> np.ndarray:
    """Per member j, ``max_L sum_i |d(L, i) - d(L, j)|`` over ``LANDMARKS`` landmarks (farthest-point picks)."""
    bound = _abs_deviation_sums(first[None])[0]
    nearest = first.copy()  # each member's delay to its nearest landmark so far
    for _ in range(LANDMARKS - 1):
        pick = int(np.argmax(nearest))
        row = _rows(graph, local[pick : pick + 1], limit)[0][local]
        bound = np.maximum(bound, _abs_deviation_sums(row[None])[0])
        nearest = np.minimum(nearest, row)
    return bound


def _abs_deviation_sums(values: np.ndarray) -> np.ndarray:
    """``sum_i |v[i] - v[j]|`` for every j of each row v of ``values`` (``[rows, n]``), in
    O(n log n) per row by sorting and prefix sums."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    prefix = np.cumsum(ordered, axis=1)
    n = values.shape[1]
    below = np.arange(n)  # entries before j in sorted order
    total = prefix[:, -1:]
    sums = ordered * below - (prefix - ordered) + (total - prefix) - ordered * (n - 1 - below)
    out = np.empty_like(sums)
    np.put_along_axis(out, order, sums, axis=1)
    return out
