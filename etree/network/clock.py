"""The simulated clock of one protocol run: a ``simpy.Environment`` and the faults it fires.

Time lives here and only here (SimPy's ``Environment.now``): protocols that
simulate message flow run their round as a simpy process on ``env``;
protocols that only know a round's duration have the clock advanced by it.
Scheduled crashes are simpy processes too, so a node dies at its exact
simulated second, whatever the round structure, and the protocol's round
processes see it dead from then on. Crashed nodes are reported as events
(``take_events``) that ``run_protocol`` turns into ``crash`` metric rows.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

import numpy as np
import simpy

from clients.streams import hashed_uniform
from etree.network.conditions import Crash, NetworkConditions

DROPOUT_SALT = 0xD209  # separates the dropout stream from sampling and training streams

Resolver = Callable[[str | int], int | None]


class SimClock:
    """One ``simpy.Environment`` per protocol run, with the set of nodes that have crashed."""

    def __init__(self, conditions: NetworkConditions | None = None, *, start_s: float = 0.0) -> None:
        self.env = simpy.Environment(initial_time=start_s)
        self.conditions = conditions or NetworkConditions()
        self.dead: set[int] = set()
        self.died_at: dict[int, float] = {}  # crashed node -> the simulated second it died
        self.pending: list[Crash] = []  # scheduled crashes that have not fired yet (a checkpoint keeps them)
        self._events: list[tuple[float, str, int]] = []

    @property
    def now(self) -> float:
        return float(self.env.now)

    def advance(self, duration_s: float) -> None:
        """Let ``duration_s`` simulated seconds pass (firing any crash due in between)."""
        if duration_s > 0:
            self.env.run(until=self.env.now + duration_s)

    def run(self, process: Generator[simpy.Event, Any, Any]) -> Any:
        """Run ``process`` on the clock to its end and return its value."""
        return self.env.run(until=self.env.process(process))

    # -- faults ----------------------------------------------------------
    def alive(self, node: int) -> bool:
        return int(node) not in self.dead

    def alive_mask(self, nodes: np.ndarray, at: np.ndarray | float | None = None) -> np.ndarray:
        """Which of ``nodes`` are alive now, or, with ``at``, were still alive at simulated time(s)
        ``at`` (a node that crashed at ``t`` is dead from ``t`` on; ``at`` may not lie past ``now``)."""
        if not self.dead:
            return np.ones(len(nodes), dtype=bool)
        if at is None:
            return ~np.isin(nodes, np.fromiter(self.dead, dtype=np.int64))
        nodes = np.asarray(nodes, dtype=np.int64)
        death = np.full(len(nodes), np.inf)
        for node in sorted(self.died_at):
            death[nodes == node] = self.died_at[node]
        return death > np.asarray(at, dtype=np.float64)

    def schedule_crashes(self, crashes: Iterable[Crash], resolve: Resolver) -> None:
        """One simpy process per crash; ``resolve`` turns a role into a node id when it fires
        (None: the protocol has no such node, and nothing happens)."""
        for crash in crashes:
            self.pending.append(crash)
            self.env.process(self._crash(crash, resolve))

    def _crash(self, crash: Crash, resolve: Resolver) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(0.0, crash.at_s - self.now))
        self.pending.remove(crash)
        node = resolve(crash.node)
        if node is not None and node not in self.dead:
            self.dead.add(int(node))
            self.died_at[int(node)] = self.now
            self.record("crash", int(node))

    def record(self, kind: str, node: int) -> None:
        """Note an event at the current simulated time (``crash``, ``failover``)."""
        self._events.append((self.now, kind, int(node)))

    def take_events(self) -> list[tuple[float, str, int]]:
        """Events since the last call, oldest first: ``(sim time, kind, node)``."""
        events, self._events = self._events, []
        return events

    def dropped(self, seed: int, round_index: int, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` sit this round out (dropout), a counter-based draw per (seed, round, device)."""
        p = self.conditions.dropout
        if p <= 0:
            return np.zeros(len(ids), dtype=bool)
        return hashed_uniform(seed, round_index, DROPOUT_SALT, ids) < p
