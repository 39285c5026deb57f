"""Where aggregators sit: the delay-medoid of a set of nodes (E-Tree paper, Eq. 1) and the delay-centre.

- Medoid (Eq. 1): c_k = argmin_{j in C_k} sum_{i in C_k} d(i, j), d the shortest-path latency.
- Centre: argmin_j max_i d(i, j), the member with the smallest largest delay: the authors' FL
  parameter server (``findParameterServerId`` in their simulator).

Ties go to the smallest id (scores equal up to round-off, ``_TIE``: the same delays summed
along different equal-latency paths differ in the last bits). Both are found exactly without an
``|C| x |C|`` search when the bounds allow: by the triangle inequality, from any landmark node L,
``d(j, i) >= |d(L, i) - d(L, j)|``, so ``sum_i d(j, i) >= sum_i |d(L, i) - d(L, j)|``
(the bound of Newling & Fleuret's trimed, "A Sub-Quadratic Exact Medoid Algorithm",
AISTATS 2017) and ``max_i d(j, i) >= max_i |d(L, i) - d(L, j)|``. Bounds start from a
few landmark rows (whose members are scored exactly on the way); members are then scored
exactly in order of their bound, a batch of Dijkstra rows at a time, and every exact row
tightens the bounds too, until the next bound exceeds the best score found. Before a batch,
the open members with the lowest bounds get the pairwise bound ``sum_i max_L |d(L, i) - d(L, j)|``
(the max inside the sum: on a random geometric graph it halves to thirds the rows a search needs).
Positions are never used: on graphs whose coordinates are for drawing only, the medoid is
still the medoid.

A search spends at most ``MAX_EXACT_ROWS`` exact rows and ``MAX_WORK`` Dijkstra work (rows
times the nodes of the graph each ran on). Every set of ``MAX_EXACT_ROWS`` members or less on a
graph of up to ``MAX_WORK / MAX_EXACT_ROWS`` (65,536) nodes gets its exact answer, and so does
a larger one whose bound closes within the budget (a compact cluster); otherwise the answer is
the best of the members scored, which were taken in order of their graph-delay bounds.
Measured on the whole fleet of 3,000- and 5,000-node graphs (three ``random_links``, the
hardest case since delays concentrate and bounds stay loose, and one ``random_geometric``),
the budgeted medoid was the exact one every time (0% excess delay); the budget caps the
cost of proving it (``tests/test_placement.py`` checks exactness against brute force).

Sets whose exhaustive search would cost more than ``SAMPLED_WORK`` Dijkstra work (members times
the nodes of their ball: e.g. 200-member clusters of a 100,000-node ``random_links`` fleet, whose
balls are the whole graph) or of more than ``SAMPLED_ABOVE`` members (8,192; e.g. the paper's
K = 8 clusters of ~12,500 devices of a 100,000-device fleet) cannot afford that budget in every
KMA iteration (at 100,000 nodes a row is ~50 ms, the budget ~1,300 rows). Their search
first spends ``SAMPLE_ROWS`` rows of members drawn at random: since delays are symmetric, the
sampled rows give every member an unbiased estimate of its total delay, ``|C| / S * sum_s d(s, j)``
(the sampling idea of Meddit, Bagaria et al., "Medoids in almost-linear time via multi-armed
bandits", AISTATS 2018), and the ``CANDIDATE_ROWS`` members with the lowest estimates are scored
exactly; the search then goes on in bound order up to ``LARGE_SET_ROWS`` rows if the bounds can
close within them (compact sets on geometric graphs: the answer is then exact) and returns the best
member scored. The sample is the ``SAMPLE_ROWS`` members of lowest hash of their id (a fixed
pseudo-random order of the nodes), so the answer is a function of the set, and a set that changes
by a few members from one KMA iteration to the next keeps most of its sample and candidates. The excess delay
this costs is measured in ``tests/test_placement.py`` and the README's benchmark section.

With a ``RowCache`` (KMA passes one), a search whose ball is most of the graph (``random_links``,
where delays concentrate; any set past about a third of a geometric graph) takes its rows from the
cache: whole-graph Dijkstra runs cut off at the delay the search asks for, as exact on the members
as runs on the ball, kept for later searches. A cluster that changed by a few members since the
last KMA iteration mostly scores members it scored then, and their rows are not computed again.

Every Dijkstra is confined to the ball of radius 3R around the first landmark
(R: its farthest member), with a cut-off at 2R: no two members are farther apart
than 2R, and every node on such a path lies within 3R of the landmark. A batch of
members near the middle needs less: member j reaches every member within
``min_L d(L, j) + R_L`` (``R_L``: landmark L's farthest member), and its paths stay within
``d(first landmark, j)`` plus that of the first landmark, so its rows run on that smaller
ball with that cut-off (a third of the Dijkstra work on a 100,000-node random geometric graph).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from clients.streams import splitmix64
from etree.network.model import NetworkModel

BATCH = 16  # members scored exactly per Dijkstra batch
MAX_EXACT_ROWS = 2048  # exact rows one search may spend
MAX_WORK = 2**27  # Dijkstra work one search may spend: the sum over its rows of the nodes each row's graph holds
LANDMARKS = 4  # rows behind the first bounds: the given centre or first member, then farthest-point picks
PAIR_ROWS = 256  # open members given the pairwise bound at once (fewer for sets past PAIR_FLOATS / 256)
PAIR_FLOATS = 2**22  # floats of one pairwise-bound block (32 MB)
SAMPLED_ABOVE = 8192  # members past which Eq. 1 starts from a sampled estimate (see the module docstring)
SAMPLED_WORK = 2**24  # ... and members times ball nodes past which it does (sets of 168+ on a 100,000-node ball)
WHOLE_BALL = 0.8  # a ball of this share of the graph's nodes runs on the whole graph (and its rows are cached)
ROW_CACHE_FLOATS = 2**27  # what a RowCache holds at most (1 GiB of float64: 1,342 rows of a 100,000-node graph)
SAMPLE_ROWS = 32  # rows of randomly drawn members behind the estimate
CANDIDATE_ROWS = 32  # members of lowest estimated total delay scored exactly
LARGE_SET_ROWS = 96  # exact rows a sampled search may spend in all
_SLACK = 1e-9  # relative slack against round-off in summed latencies
_TIE = 1e-12  # scores this close (relatively) are equal: ties go to the smallest id

# per objective: the exact score of rows [b, m]; the lower bound each landmark row [b, m] gives every member;
# and how one member's pairwise lower bounds [j, m] reduce to a bound on its score
Objective = tuple[
    Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]
]


def delay_medoid(network: NetworkModel, members: np.ndarray) -> int:
    """The member of ``members`` with the least total latency to all of them (Eq. 1), on ``network``'s graph."""
    return medoid(network.latency_graph, members)


def delay_centre(network: NetworkModel, members: np.ndarray) -> int:
    """The member of ``members`` with the smallest largest latency to all of them (the authors' FL server)."""
    return _search(network.latency_graph, members, None, _CENTRE)


def medoid(
    latency: sparse.csr_array,
    members: np.ndarray,
    centre_row: np.ndarray | None = None,
    landmark_rows: np.ndarray | None = None,
    cache: RowCache | None = None,
) -> int:
    """Eq. 1 on a symmetric latency csgraph (:func:`topologies.latency_csgraph`).

    ``centre_row`` (delays from a node near the set, e.g. its old centre) saves the
    first landmark's Dijkstra. ``landmark_rows`` (``[l, n]`` delays from any nodes, e.g. the
    neighbouring clusters' centres, which KMA has at hand) replace the farthest-point landmarks:
    any node's delays bound the same way, so the answer is the same, for no Dijkstra.
    ``cache`` (of ``latency``) serves the search's rows: the answer is the same with or without.
    """
    return _search(latency, members, centre_row, _MEDOID, landmark_rows, cache)


class RowCache:
    """Delay rows by source node, each exact up to the cut-off it was computed with (beyond it: inf),
    the least recently used dropped past ``capacity`` stored floats.

    Rows are Dijkstra runs on the whole graph cut off at the asked delay: as exact as a run on a
    search's ball and as cheap (Dijkstra stops at the cut-off), and reusable by any later search
    that needs no more (KMA's next iteration, whose sets have barely changed). A row cut off
    short of most of the graph is held sparse (its finite entries), so a cache holds thousands.
    Hand-written rather than ``functools.lru_cache``: it is bounded by bytes, serves a batch of
    sources with one Dijkstra call for the missing ones, reuses a row for any cut-off up to its
    own, and lets a caller look rows up without computing them."""

    def __init__(self, latency: sparse.csr_array, capacity: int = ROW_CACHE_FLOATS) -> None:
        self.latency = latency
        self.nodes = latency.shape[0]
        self.capacity = capacity
        self.stored = 0.0  # floats held (a sparse entry costs 1.5: a float64 value and an int32 index)
        self._rows: OrderedDict[int, tuple[float, np.ndarray | None, np.ndarray]] = OrderedDict()
        self.computed = 0  # rows computed so far (for benchmarks and tests)

    def get(self, source: int, limit: float = np.inf) -> np.ndarray | None:
        """The row of ``source`` if one exact up to ``limit`` is held (then most recently used), else None;
        never computes."""
        entry = self._rows.get(source)
        if entry is None or entry[0] < limit:
            return None
        self._rows.move_to_end(source)
        _, index, values = entry
        if index is None:
            return values
        row = np.full(self.nodes, np.inf)
        row[index] = values
        return row

    def rows(self, sources: np.ndarray, limit: float = np.inf) -> np.ndarray:
        """Delays ``[len(sources), n]`` from each of ``sources`` to every node, exact up to ``limit``."""
        ids = [int(s) for s in sources]
        found = {s: row for s in dict.fromkeys(ids) if (row := self.get(s, limit)) is not None}
        missing = sorted(set(ids) - found.keys())
        if missing:
            found |= dict(zip(missing, _rows(self.latency, np.array(missing), limit), strict=True))
            self.computed += len(missing)
        for s in missing:
            self._hold(s, limit, found[s])
        return np.stack([found[s] for s in ids]) if ids else np.empty((0, self.nodes))

    def _hold(self, source: int, limit: float, row: np.ndarray) -> None:
        old = self._rows.pop(source, None)
        if old is not None:
            self.stored -= _stored(old)
        index = np.flatnonzero(np.isfinite(row))
        entry = (limit, None, row) if 3 * len(index) > 2 * self.nodes else (limit, index.astype(np.int32), row[index])
        self._rows[source] = entry
        self.stored += _stored(entry)
        while self.stored > self.capacity and len(self._rows) > 1:
            self.stored -= _stored(self._rows.popitem(last=False)[1])


def _stored(entry: tuple[float, np.ndarray | None, np.ndarray]) -> float:
    return len(entry[2]) * (1.0 if entry[1] is None else 1.5)


class _Ball:
    """The graph around a set: nodes within 3R of the first landmark (R: its farthest member), and
    the smaller balls a batch of sources near the middle needs. With a ``RowCache`` and a ball of
    most of the graph, rows come from the cache instead (whole-graph Dijkstra cut off at the same
    delay: the same exact member delays)."""

    def __init__(
        self,
        latency: sparse.csr_array,
        centre_row: np.ndarray,
        members: np.ndarray,
        reach: float,
        cache: RowCache | None = None,
    ) -> None:
        self.nodes = np.flatnonzero(centre_row <= 3 * reach * (1 + _SLACK) + 1e-12)
        # a cut-off Dijkstra on the whole graph costs 2-3x one on a small ball's own graph (measured at
        # 100,000 random geometric nodes), so the cache serves balls of most of the graph only
        whole = len(self.nodes) >= WHOLE_BALL * latency.shape[0]
        if whole:
            self.nodes = np.arange(latency.shape[0])
        self.members, self.cache = members, cache if whole else None
        self.graph = latency if whole else latency[self.nodes][:, self.nodes]
        self.around = centre_row[self.nodes]  # delay from the first landmark to each ball node
        self.local = np.searchsorted(self.nodes, members)
        self.work = 0

    def rows(self, sources: np.ndarray, limit: float, radius: float = np.inf) -> np.ndarray:
        """Exact delays from members ``sources`` (indices into the set) to every member, up to
        ``limit``; ``radius`` bounds the first landmark's delay to every node such a path visits."""
        cut = limit * (1 + _SLACK) + 1e-12
        if self.cache is not None:  # a cut-off Dijkstra visits only what the ball's would
            self.work += len(sources) * len(self.nodes)
            return self.cache.rows(self.members[sources], cut)[:, self.members]
        graph, local = self.graph, self.local
        inner = np.flatnonzero(self.around <= radius * (1 + _SLACK) + 1e-12)
        if len(inner) < 0.8 * len(self.nodes):  # a ball of its own: Dijkstra's cost grows with the nodes
            graph, local = self.graph[inner][:, inner], np.searchsorted(inner, local)
        self.work += len(sources) * graph.shape[0]
        return _rows(graph, local[sources], cut)[:, local]


def _search(
    latency: sparse.csr_array,
    members: np.ndarray,
    centre_row: np.ndarray | None,
    objective: Objective,
    landmark_rows: np.ndarray | None = None,
    cache: RowCache | None = None,
) -> int:
    score, bound_of, reduce = objective
    members = np.unique(np.asarray(members, dtype=np.int64))
    if len(members) == 1:
        return int(members[0])
    if centre_row is None:
        centre_row = _rows(latency, members[:1])[0]
    first = centre_row[members]
    reach = float(first.max())
    if not np.isfinite(reach):
        raise ValueError("medoid: the members are not connected")
    ball = _Ball(latency, centre_row, members, reach, cache)
    if len(members) <= BATCH:
        return int(members[_best(score(ball.rows(np.arange(len(members)), 2 * reach)))])
    given = None if landmark_rows is None else landmark_rows[:, members]
    if given is not None:
        given = given[np.isfinite(given).all(1)]
    if given is not None and len(given) >= LANDMARKS - 1:
        landmarks = _Landmarks(np.concatenate([first[None], given]), np.zeros(0, dtype=np.int64))
    else:
        landmarks = _landmark_rows(ball, first, 2 * reach)  # [l, m]: the first landmark, then members
    scored = np.zeros(len(members), dtype=bool)
    value = np.full(len(members), np.inf)  # exact scores of the scored members
    picks = landmarks.picks
    scored[picks], value[picks] = True, score(landmarks.rows[1 : 1 + len(picks)])
    bound = np.maximum(bound_of(landmarks.rows).max(0), np.where(scored, value, -np.inf))
    reaches = landmarks.rows.max(1)  # each landmark's farthest member
    pair = _PairBound(landmarks.rows, reduce)
    spent = len(picks)
    budget = MAX_EXACT_ROWS
    sampled = objective is _MEDOID and (len(members) > SAMPLED_ABOVE or len(members) * len(ball.nodes) > SAMPLED_WORK)

    if sampled:
        budget = LARGE_SET_ROWS
        sample = _hashed_open_members(members, scored)
        sample_rows = ball.rows(sample, 2 * reach)
        # d is symmetric, so the sampled rows hold the sampled part of every member's total delay
        estimate = np.where(scored, np.inf, sample_rows.sum(0))
        estimate[sample] = np.inf
        candidates = np.sort(np.argsort(estimate, kind="stable")[:CANDIDATE_ROWS])
        for chosen, rows in ((sample, sample_rows), (candidates, ball.rows(candidates, 2 * reach))):
            spent += len(chosen)
            scored[chosen], value[chosen] = True, score(rows)
            bound = np.maximum(bound, bound_of(rows).max(0))
            bound[chosen] = value[chosen]
    while True:
        best = _best(value)
        cut = value[best] * (1 + _SLACK) + 1e-12
        waiting = np.flatnonzero(~scored & (bound <= cut))
        if not len(waiting) or spent >= budget or ball.work >= MAX_WORK:
            return int(members[best])
        bound = pair.tighten(bound, waiting, cut)
        waiting = waiting[bound[waiting] <= cut]
        if not len(waiting) or (sampled and len(waiting) > budget - spent):
            # sampled: bounds that cannot close within the budget pick no better than the estimate did
            return int(members[best])
        chunk = waiting[np.lexsort((members[waiting], bound[waiting]))[:BATCH]]
        # a source j reaches every member within min_l d(l, j) + reach_l; its paths stay within
        # d(first landmark, j) + that of the first landmark
        limits = (landmarks.rows[:, chunk] + reaches[:, None]).min(0)
        rows = ball.rows(chunk, float(limits.max()), float((first[chunk] + limits).max()))
        spent += len(chunk)
        scored[chunk], value[chunk] = True, score(rows)
        bound = np.maximum(bound, bound_of(rows).max(0))
        bound[chunk] = value[chunk]


def _hashed_open_members(members: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """The ``SAMPLE_ROWS`` unscored members (indices into ``members``) of lowest SplitMix64 hash of their
    id (:func:`clients.streams.splitmix64`): a uniform pseudo-random sample that depends on the set
    only, and changes little when the set does."""
    open_members = np.flatnonzero(~scored)
    order = np.argsort(splitmix64(members[open_members].astype(np.uint64)), kind="stable")
    return np.sort(open_members[order[:SAMPLE_ROWS]])


class _Landmarks:
    def __init__(self, rows: np.ndarray, picks: np.ndarray) -> None:
        self.rows, self.picks = rows, picks


def _landmark_rows(ball: _Ball, first: np.ndarray, limit: float) -> _Landmarks:
    """The first landmark's member delays, then ``LANDMARKS - 1`` farthest-point picks among the members."""
    rows = [first]
    picks: list[int] = []
    nearest = first.copy()  # each member's delay to its nearest landmark so far
    for _ in range(LANDMARKS - 1):
        pick = int(np.argmax(nearest))
        if nearest[pick] <= 0:
            break
        row = ball.rows(np.array([pick]), limit)[0]
        rows.append(row)
        picks.append(pick)
        nearest = np.minimum(nearest, row)
    return _Landmarks(np.stack(rows), np.array(picks, dtype=np.int64))


class _PairBound:
    """The tighter bound: per pair, ``d(i, j) >= max_l |d(l, i) - d(l, j)|`` over the landmark rows,
    reduced over i (a sum for Eq. 1, a max for the centre), for at most ``PAIR_ROWS`` open members at once."""

    def __init__(self, landmarks: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]) -> None:
        self.landmarks = landmarks
        self.reduce = reduce
        self.done = np.zeros(landmarks.shape[1], dtype=bool)

    def tighten(self, bound: np.ndarray, waiting: np.ndarray, cut: float) -> np.ndarray:
        fresh = waiting[~self.done[waiting]]
        if not len(fresh) or not (~self.done[waiting[np.argsort(bound[waiting], kind="stable")[:BATCH]]]).any():
            return bound
        fresh = fresh[np.argsort(bound[fresh], kind="stable")[: max(1, min(PAIR_ROWS, PAIR_FLOATS // len(bound)))]]
        pairs = np.zeros((len(fresh), len(bound)))  # [j, m]: max over the landmarks, one landmark at a time
        for row in self.landmarks:
            np.maximum(pairs, np.abs(row[fresh, None] - row[None, :]), out=pairs)
        bound = bound.copy()
        bound[fresh] = np.maximum(bound[fresh], self.reduce(pairs))
        self.done[fresh] = True
        return bound


def _best(value: np.ndarray) -> int:
    """The first (smallest id: members are sorted) of the scores equal to the least up to round-off
    (``_TIE``): the same delays summed along different equal-latency paths differ in the last bits."""
    return int(np.argmax(value <= value.min() * (1 + _TIE)))


def _rows(graph: sparse.csr_array, sources: np.ndarray, limit: float = np.inf) -> np.ndarray:
    return np.atleast_2d(csgraph.dijkstra(graph, directed=True, indices=sources, limit=limit))


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


_MEDOID: Objective = (lambda rows: rows.sum(1), _abs_deviation_sums, lambda pairs: pairs.sum(1))
_CENTRE: Objective = (lambda rows: rows.max(1), _abs_deviation_max, lambda pairs: pairs.max(1))
