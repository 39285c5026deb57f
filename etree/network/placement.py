"""Where aggregators sit: the delay-medoid of a set of nodes (E-Tree paper, Eq. 1) and the delay-centre.

- Medoid (Eq. 1): c_k = argmin_{j in C_k} sum_{i in C_k} d(i, j), d the shortest-path latency.
- Centre: argmin_j max_i d(i, j), the member with the smallest largest delay: the authors' FL
  parameter server (``findParameterServerId`` in their simulator).

Ties go to the smallest id. Both are found exactly without an ``|C| x |C|`` search
when the bound allows: by the triangle inequality, from any landmark node L,
``d(j, i) >= |d(L, i) - d(L, j)|``, so ``sum_i d(j, i) >= sum_i |d(L, i) - d(L, j)|``
(the bound of Newling & Fleuret's trimed, "A Sub-Quadratic Exact Medoid Algorithm",
AISTATS 2017) and ``max_i d(j, i) >= max_i |d(L, i) - d(L, j)|``. Bounds start from a
few landmark rows; members are then scored exactly in order of their bound, a batch
of Dijkstra rows at a time, and every exact row becomes a landmark too, until the
next bound exceeds the best score found. Positions are never used: on graphs whose
coordinates are for drawing only, the medoid is still the medoid.

A search spends at most ``MAX_EXACT_ROWS`` exact rows. Every set of that size or
less gets its exact answer, and so does a larger one whose bound closes within the
budget (a compact cluster); otherwise the answer is the best of the
``MAX_EXACT_ROWS`` members with the lowest bounds: chosen by graph delays, scored
exactly. Measured on the whole fleet of 3,000- and 5,000-node graphs (three
``random_links``, the hardest case since delays concentrate and bounds stay loose, and
one ``random_geometric``), the budgeted medoid was the exact one every time (0% excess
delay); the budget caps the cost of proving it (``tests/test_placement.py`` checks
exactness against brute force).

Every Dijkstra is confined to the ball of radius 3R around the first landmark
(R: its farthest member), with a cut-off at 2R: no two members are farther apart
than 2R, and every node on such a path lies within 3R of the landmark.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from etree.network.model import NetworkModel

BATCH = 64  # members scored exactly per Dijkstra batch
MAX_EXACT_ROWS = 2048  # exact rows one search may spend
LANDMARKS = 4  # rows behind the first bounds: the given centre or first member, then farthest-point picks
_SLACK = 1e-9  # relative slack against round-off in summed latencies

# per objective: the exact score of rows [b, m], and the lower bound each landmark row [b, m] gives every member
Objective = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def delay_medoid(network: NetworkModel, members: np.ndarray) -> int:
    """The member of ``members`` with the least total latency to all of them (Eq. 1), on ``network``'s graph."""
    return medoid(network.latency_graph, members)


def delay_centre(network: NetworkModel, members: np.ndarray) -> int:
    """The member of ``members`` with the smallest largest latency to all of them (the authors' FL server)."""
    return _search(network.latency_graph, members, None, _CENTRE)


def medoid(latency: sparse.csr_array, members: np.ndarray, centre_row: np.ndarray | None = None) -> int:
    """Eq. 1 on a symmetric latency csgraph (:func:`topologies.latency_csgraph`).

    ``centre_row`` (delays from a node near the set, e.g. its old centre) saves the
    first landmark's Dijkstra.
    """
    return _search(latency, members, centre_row, _MEDOID)


def _search(latency: sparse.csr_array, members: np.ndarray, centre_row: np.ndarray | None, objective: Objective) -> int:
    score, bound_of = objective
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
        return int(members[int(np.argmin(score(_rows(graph, local, limit)[:, local])))])
    bound = _landmark_bounds(graph, local, centre_row[members], limit, bound_of)
    open_ = np.ones(len(members), dtype=bool)
    best_score, best = np.inf, -1
    while open_.any() and len(members) - int(open_.sum()) < MAX_EXACT_ROWS:
        waiting = np.flatnonzero(open_)
        chunk = waiting[np.lexsort((members[waiting], bound[waiting]))[:BATCH]]
        if bound[chunk[0]] > best_score * (1 + _SLACK) + 1e-12:
            break
        rows = _rows(graph, local[chunk], limit)[:, local]
        open_[chunk] = False
        for row, value in zip(chunk.tolist(), score(rows).tolist(), strict=True):
            if value < best_score or (value == best_score and members[row] < members[best]):
                best_score, best = value, row
        bound = np.maximum(bound, bound_of(rows).max(0))
    return int(members[best])


def _rows(graph: sparse.csr_array, sources: np.ndarray, limit: float = np.inf) -> np.ndarray:
    return np.atleast_2d(csgraph.dijkstra(graph, directed=True, indices=sources, limit=limit))


def _landmark_bounds(
    graph: sparse.csr_array, local: np.ndarray, first: np.ndarray, limit: float, bound_of: Callable[..., np.ndarray]
) -> np.ndarray:
    """Each member's lower bound from ``LANDMARKS`` landmark rows (farthest-point picks after ``first``)."""
    bound = bound_of(first[None])[0]
    nearest = first.copy()  # each member's delay to its nearest landmark so far
    for _ in range(LANDMARKS - 1):
        pick = int(np.argmax(nearest))
        row = _rows(graph, local[pick : pick + 1], limit)[0][local]
        bound = np.maximum(bound, bound_of(row[None])[0])
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


def _abs_deviation_max(values: np.ndarray) -> np.ndarray:
    """``max_i |v[i] - v[j]|`` for every j of each row v of ``values``."""
    return np.maximum(values.max(1, keepdims=True) - values, values - values.min(1, keepdims=True))


_MEDOID: Objective = (lambda rows: rows.sum(1), _abs_deviation_sums)
_CENTRE: Objective = (lambda rows: rows.max(1), _abs_deviation_max)
