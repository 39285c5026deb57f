"""Snapshots of a protocol run between rounds, so an interrupted run continues exactly.

A snapshot holds what ``run_protocol`` keeps (round, bytes sent, event
counters), the clock (simulated time, dead nodes, crashes still to fire) and
the protocol's own attributes (model stacks, tree, late messages, random
generators), pickled. Two kinds of things are left out and re-attached on
restore, because they are rebuilt identically from the spec and would only
bloat every snapshot: the workload (data, graph, model: referenced by
``pickle``'s persistent ids, never copied) and the protocol's configuration
callables (tree builders), which a freshly made protocol of the same spec
already holds. Every other random draw in the engine is counter-based
(``clients.streams``), so nothing else carries state between rounds.

The contract for protocol authors: attributes that are functions (closures)
or ``functools.partial`` are configuration set by the constructor and are
taken from the fresh protocol; everything else, bound methods included (they
pickle with their object), is state and must be picklable.
"""

from __future__ import annotations

import functools
import io
import pickle
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etree.network.clock import SimClock
from etree.network.conditions import Crash

if TYPE_CHECKING:  # protocol.py imports this module to run from a snapshot
    from etree.engine.protocol import Protocol
    from etree.engine.workload import Workload

_CONFIG_TYPES = (types.FunctionType, functools.partial)  # bound methods pickle with their object
_FROM_FRESH = "<from the freshly made protocol>"


@dataclass(frozen=True)
class ClockState:
    """Everything a ``SimClock`` holds between rounds."""

    now: float
    dead: tuple[int, ...]
    died_at: dict[int, float]
    pending: tuple[Crash, ...]


@dataclass(frozen=True)
class RunSnapshot:
    """A protocol run after ``round_index`` complete rounds."""

    round_index: int
    sent: int
    counters: dict[str, float] = field(default_factory=dict)
    clock: ClockState = ClockState(0.0, (), {}, ())
    protocol_state: bytes = b""


def _shared_objects(workload: Workload, clock: SimClock) -> dict[str, Any]:
    """Objects a protocol may reference that a snapshot must not copy, by name."""
    named: dict[str, Any] = {
        "workload": workload,
        "graph": workload.graph,
        "data": workload.data,
        "model": workload.model,
        "x_test": workload.x_test,
        "y_test": workload.y_test,
        "trainer": workload.trainer,  # may hold processes (Ray): never pickled
        "clock": clock,
    }
    named |= {f"initial.{key}": tensor for key, tensor in workload.initial.items()}
    named |= {f"data.{key}": value for key, value in vars(workload.data).items()}
    return named


class _SnapshotPickler(pickle.Pickler):
    def __init__(self, buffer: io.BytesIO, shared: dict[int, str]) -> None:
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self._shared = shared

    def persistent_id(self, obj: Any) -> str | None:
        return self._shared.get(id(obj))


class _SnapshotUnpickler(pickle.Unpickler):
    def __init__(self, buffer: io.BytesIO, shared: dict[str, Any]) -> None:
        super().__init__(buffer)
        self._shared = shared

    def persistent_load(self, pid: Any) -> Any:
        return self._shared[pid]


def take_snapshot(
    protocol: Protocol, workload: Workload, round_index: int, sent: int, counters: dict[str, float]
) -> RunSnapshot:
    """The run's state after ``round_index`` rounds (the clock must hold no unfinished round)."""
    clock = protocol.clock
    attributes = {
        name: _FROM_FRESH if isinstance(value, _CONFIG_TYPES) else value for name, value in vars(protocol).items()
    }
    buffer = io.BytesIO()
    by_id = {id(obj): name for name, obj in _shared_objects(workload, clock).items()}
    _SnapshotPickler(buffer, by_id).dump(attributes)
    state = ClockState(clock.now, tuple(sorted(clock.dead)), dict(clock.died_at), tuple(clock.pending))
    return RunSnapshot(round_index, sent, dict(counters), state, buffer.getvalue())


def restore_snapshot(protocol: Protocol, workload: Workload, snapshot: RunSnapshot) -> SimClock:
    """Put a freshly made protocol (same spec, ``setup`` not called) into the snapshot's state
    on a new clock, with the crashes still to come rescheduled on it; returns that clock."""
    state = snapshot.clock
    clock = SimClock(workload.network, start_s=state.now)
    clock.dead = set(state.dead)
    clock.died_at = dict(state.died_at)
    shared = _shared_objects(workload, clock)
    attributes = _SnapshotUnpickler(io.BytesIO(snapshot.protocol_state), shared).load()
    for name, value in attributes.items():
        if not (isinstance(value, str) and value == _FROM_FRESH):
            setattr(protocol, name, value)
    protocol.clock = clock
    clock.schedule_crashes(state.pending, protocol.resolve_node)
    return clock
