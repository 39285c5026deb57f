"""When and whether the messages of one synchronous tree round arrive, on the run's simpy clock.

A round of the tree engine (``etree.trees.hierarchical``) is one simpy process: each
aggregator is a sub-process that waits for the uploads it expects, checks
whether its node is still alive when it would aggregate, then reports up;
the top pushes back down. Per-device work stays vectorised: an aggregator's
uploads are one numpy expression (ready time + path latency + bits /
bottleneck bandwidth, optionally queued FIFO on the link into the aggregator
by ``fifo_link_arrivals``), so the simpy event count is O(aggregators) per
round, not O(devices). Without contention, deadlines or crashes this gives
the same times as a max-plus recursion over the tree (the oracle in tests/test_network_time.py); simpy
is there for what max-plus cannot express: a crash at an exact simulated
second, the detection timeout, failover and its resent messages.

Fault semantics (choices the E-Tree paper leaves open):

- An aggregator is checked when it would aggregate; if its node is dead its
  children notice ``detection_timeout_s`` later. With ``failover`` (E-Tree)
  the next delay-medoid (paper Eq. 1) of the cluster's live members becomes
  head and the children resend to it; without (FedAvg, HierFAVG) the cluster
  is lost for good and its members idle from then on.
- With a deadline, uploads arriving at a layer-1 head after
  ``round start + deadline_s`` are late; the head aggregates at the deadline
  without them. Upper layers wait for every live child.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import simpy

from etree.network.clock import SimClock
from etree.network.links import LinkLedger
from etree.network.model import NetworkModel, fifo_link_arrivals
from etree.network.placement import delay_medoid
from etree.trees.tree import AggregationTree

Gathered = tuple[float | None, np.ndarray, np.ndarray]  # when it aggregated (None: not), used, late


@dataclass(frozen=True)
class RoundOutcome:
    """What the network did to one round."""

    duration_s: float
    messages: int
    delivered: np.ndarray  # per active device: its update made it into its layer-1 aggregate
    late: np.ndarray  # per active device: its upload missed the deadline
    top: int  # the highest layer that actually aggregated
    bytes_sent: int = 0  # the bytes of those messages


@dataclass(frozen=True)
class MessageSizes:
    """Bytes of a round's uploads when they are not one model each (a recommender's touched item
    rows, ``etree.trees.sparse_rows``); pushes down stay ``down_size``.

    ``uploads[i]``: the upload of the round's active device i. ``aggregate(level, k, parts)``: the
    upload of aggregator k of layer level+1, given what it aggregated this round: the positions
    (into the active devices) of the uploads it used (level 0), or the child aggregators it heard.
    """

    uploads: np.ndarray
    aggregate: Callable[[int, int, np.ndarray], int]


class TreeTiming:
    """Times synchronous tree rounds on ``clock``; holds the tree as failover changes its heads."""

    def __init__(
        self,
        tree: AggregationTree,
        network: NetworkModel,
        clock: SimClock,
        size: int,
        *,
        failover: bool,
        ledger: LinkLedger | None = None,
        down_size: int | None = None,
    ) -> None:
        self.tree = tree
        self.network = network
        self.clock = clock
        self.size = size
        self.down_size = size if down_size is None else down_size  # bytes of a message pushed down (IFCA: k models)
        self.failover = failover
        self.ledger = ledger
        conditions = clock.conditions
        self.contention = conditions.contention
        self.deadline_s = conditions.deadline_s
        self.timeout_s = conditions.detection_timeout_s
        self.lost: list[set[int]] = [set() for _ in tree.heads]  # clusters whose head died, not replaced
        self.cap = tree.depth  # highest layer that can still aggregate
        self._messages = 0
        self._bytes = 0.0

    # -- state the protocol reads ------------------------------------------
    def orphaned(self, devices: np.ndarray) -> np.ndarray:
        """Which devices have no live path to an aggregator: their layer-1 cluster is lost."""
        if not self.lost[0]:
            return np.zeros(len(devices), dtype=bool)
        return np.isin(self.tree.parents[0][devices], np.fromiter(self.lost[0], dtype=np.int64))

    # -- the round ---------------------------------------------------------
    def run_round(
        self, active: np.ndarray, compute_s: np.ndarray, top: int, public_down: bool, sizes: MessageSizes | None = None
    ) -> RoundOutcome:
        """Simulate one round (``active`` devices, their compute seconds, layers up to ``top``; uploads of
        ``sizes`` bytes, default ``size`` each)."""
        return self.clock.run(self._round(active, compute_s, min(top, self.cap), public_down, sizes))

    def _round(
        self, active: np.ndarray, compute_s: np.ndarray, top: int, public_down: bool, sizes: MessageSizes | None
    ) -> Generator[simpy.Event, Any, RoundOutcome]:
        env = self.clock.env
        start = env.now
        self._messages = 0
        self._bytes = 0.0
        delivered = np.zeros(len(active), dtype=bool)
        late = np.zeros(len(active), dtype=bool)
        if not len(active):  # nobody can work: devices wait on an aggregator that never answers
            yield env.timeout(self.timeout_s if any(self.lost) else 0.0)
            return RoundOutcome(env.now - start, 0, delivered, late, 0)
        ready = start + compute_s
        if top == 0:  # local epochs only
            yield env.timeout(float(ready.max()) - start)
            return RoundOutcome(env.now - start, 0, np.ones(len(active), dtype=bool), late, 0)
        deadline = start + self.deadline_s if self.deadline_s > 0 else np.inf
        tree = self.tree
        cluster = tree.parents[0][active]
        shared = np.isin(active, tree.public)
        gathers: dict[int, tuple[np.ndarray, simpy.Process]] = {}
        for k in range(len(tree.heads[0])):
            if k in self.lost[0]:
                continue
            rows = np.flatnonzero((cluster == k) | (shared & (cluster != k)))  # members, then public guests
            if len(rows):
                up = None if sizes is None else sizes.uploads[rows]
                gathers[k] = (rows, env.process(self.gather_rows(0, k, active[rows], ready[rows], deadline, up)))
        if gathers:
            yield env.all_of([p for _, p in gathers.values()])
        done: dict[int, float] = {}
        used: dict[int, np.ndarray] = {}  # what each aggregator of the layer below aggregated (MessageSizes)
        for k, (rows, process) in gathers.items():
            at, on_time, past = cast(Gathered, process.value)
            home = cluster[rows] == k
            late[rows[home]] = past[home]
            if at is not None:
                done[k] = at
                used[k] = rows[on_time]
                delivered[rows[home]] = on_time[home]
        levels = [done]
        for level in range(1, top):
            parent = self.tree.parents[level]
            ups: dict[int, simpy.Process] = {}
            parts: dict[int, np.ndarray] = {}
            for g in range(len(self.tree.heads[level])):
                sending = [c for c in np.flatnonzero(parent == g).tolist() if c in levels[-1]]
                if g in self.lost[level] or not sending:
                    continue
                senders = self.tree.heads[level - 1][sending]
                sent = np.array([levels[-1][c] for c in sending])
                up = None if sizes is None else np.array([sizes.aggregate(level - 1, c, used[c]) for c in sending])
                ups[g] = env.process(self.gather_rows(level, g, senders, sent, np.inf, up))
                parts[g] = np.array(sending, dtype=np.int64)
            if ups:
                yield env.all_of(list(ups.values()))
            gathered = {g: cast(Gathered, p.value)[0] for g, p in ups.items()}
            used = {g: parts[g][cast(Gathered, p.value)[1]] for g, p in ups.items()}
            above = {g: at for g, at in gathered.items() if at is not None}
            if not above:
                if self.lost[level] and not self.failover:
                    self.cap = min(self.cap, level)  # the layer above is gone for good
                break
            levels.append(above)
        reached = len(levels)
        finish = max([max(d.values()) for d in levels if d], default=env.now)
        down = dict(levels[-1])
        for level in range(reached - 1, 0, -1):  # each head forwards to its child heads
            parent, children, above_heads = self.tree.parents[level], self.tree.heads[level - 1], self.tree.heads[level]
            nxt = dict(levels[level - 1])  # a child nobody above reached pushes its own model
            for g, at in sorted(down.items()):
                mine = np.flatnonzero(parent == g)
                arrive = self._transfer(int(above_heads[g]), children[mine], np.full(len(mine), at), self.down_size)
                nxt.update(zip(mine.tolist(), arrive.tolist(), strict=True))
            down = nxt
        heads = self.tree.heads[0]
        members = np.arange(self.tree.devices)
        alive = self.clock.alive_mask(members)
        for k, at in sorted(down.items()):  # every live device hears from its layer-1 head
            targets = members[(self.tree.parents[0] == k) & alive]
            if public_down and reached < self.tree.depth:
                guests = self.tree.public[self.tree.parents[0][self.tree.public] != k]
                targets = np.concatenate([targets, guests[self.clock.alive_mask(guests)]])
            if len(targets):
                pushed = self._transfer(int(heads[k]), targets, np.full(len(targets), at), self.down_size)
                finish = max(finish, float(pushed.max()))
        yield env.timeout(max(0.0, finish - env.now))
        return RoundOutcome(env.now - start, self._messages, delivered, late, reached, round(self._bytes))

    def gather_rows(
        self,
        level: int,
        k: int,
        senders: np.ndarray,
        sent_at: np.ndarray,
        deadline: float,
        sizes: np.ndarray | None = None,
    ) -> Generator[simpy.Event, Any, Gathered]:
        """Aggregator k of layer level+1 collects ``senders``' models (``sizes`` bytes each, default
        ``size``); returns when it aggregated (None: it did not), which uploads it used, and which were late."""
        env = self.clock.env
        head = int(self.tree.heads[level][k])
        arrive = self._transfer(head, senders, sent_at, sizes)
        on_time = arrive <= deadline
        past = ~on_time
        wait = float(arrive.max()) if on_time.all() else deadline
        yield env.timeout(max(0.0, wait - env.now))
        if not self.clock.alive(head):
            yield env.timeout(self.timeout_s)  # children hear nothing back, give up on the head
            new = self._promote(level, k) if self.failover else None
            if new is None:
                self.lost[level].add(k)
                return None, np.zeros(len(senders), dtype=bool), past
            on_time &= self.clock.alive_mask(senders)
            if on_time.any():  # the children resend to the new head
                resent = None if sizes is None else sizes[on_time]
                again = self._transfer(new, senders[on_time], np.full(int(on_time.sum()), env.now), resent)
                yield env.timeout(max(0.0, float(again.max()) - env.now))
        if not on_time.any():
            return None, on_time, past
        return env.now, on_time, past

    def _transfer(
        self, node: int, others: np.ndarray, sent_at: np.ndarray, size: int | np.ndarray | None = None
    ) -> np.ndarray:
        """Arrival times of one message each (``size`` bytes, one or per message; default ``self.size``)
        between ``node`` and ``others`` (either way), counted."""
        size = self.size if size is None else size
        arrive = sent_at + self.network.transfer_s(node, others, size)
        remote = others != node
        self._messages += int(remote.sum())
        each = np.broadcast_to(np.asarray(size, dtype=np.float64), remote.shape)
        self._bytes += float(each[remote].sum())
        if self.ledger is not None:
            self.ledger.record(node, others[remote], each[remote])
        if self.contention and remote.sum() > 1:
            links = self.network.first_links(node, others)
            service = 8.0 * size / self.network.link_bandwidth[np.maximum(links, 0)]
            arrive = fifo_link_arrivals(arrive, links, service)
        return arrive

    def _promote(self, level: int, k: int) -> int | None:
        """Make the delay-medoid of the cluster's live members its head (None: nobody is left)."""
        tree = self.tree
        if level == 0:
            members = np.flatnonzero(tree.parents[0] == k)
        else:
            members = tree.heads[level - 1][np.flatnonzero(tree.parents[level] == k)]
        members = members[self.clock.alive_mask(members)]
        if not len(members):
            return None
        new = delay_medoid(self.network, members)
        heads = list(tree.heads)
        heads[level] = heads[level].copy()
        heads[level][k] = new
        self.tree = AggregationTree(heads=tuple(heads), parents=tree.parents, public=tree.public)
        self.network.prepare([new])
        self.clock.record("failover", new)
        return new


def round_messages(tree: AggregationTree, active: np.ndarray, top: int, public_down: bool) -> int:
    """Messages of one fault-free round, counted without timing it (``[network] timing = false``)."""
    if top == 0 or not len(active):
        return 0
    heads0 = tree.heads[0]
    clusters = len(heads0)
    messages = int(np.sum(active != heads0[tree.parents[0][active]]))
    messages += int(np.isin(active, tree.public).sum()) * (clusters - 1)
    for level in range(1, top):  # up and down between heads
        messages += 2 * int(np.sum(tree.heads[level - 1] != tree.heads[level][tree.parents[level]]))
    messages += int(np.sum(np.arange(tree.devices) != heads0[tree.parents[0]]))
    if public_down and top < tree.depth:
        messages += len(tree.public) * (clusters - 1)
    return messages


def round_bytes(
    tree: AggregationTree, active: np.ndarray, top: int, public_down: bool, sizes: MessageSizes, down_size: int
) -> int:
    """Bytes of the messages :func:`round_messages` counts, uploads as ``sizes`` gives them and every
    push down ``down_size`` (``[network] timing = false``)."""
    if top == 0 or not len(active):
        return 0
    heads0 = tree.heads[0]
    cluster = tree.parents[0][active]
    guest = np.isin(active, tree.public)
    total = 0.0
    used: dict[int, np.ndarray] = {}
    for k in range(len(heads0)):
        rows = np.flatnonzero((cluster == k) | (guest & (cluster != k)))
        used[k] = rows
        total += float(sizes.uploads[rows][active[rows] != heads0[k]].sum())
    for level in range(1, top):
        parent = tree.parents[level]
        for c in np.flatnonzero(tree.heads[level - 1] != tree.heads[level][parent]).tolist():
            total += sizes.aggregate(level - 1, c, used.get(c, np.zeros(0, dtype=np.int64)))
        used = {g: np.flatnonzero(parent == g) for g in range(len(tree.heads[level]))}
    downs = sum(int(np.sum(tree.heads[level - 1] != tree.heads[level][tree.parents[level]])) for level in range(1, top))
    downs += int(np.sum(np.arange(tree.devices) != heads0[tree.parents[0]]))
    if public_down and top < tree.depth:
        downs += len(tree.public) * (len(heads0) - 1)
    return round(total + downs * down_size)
