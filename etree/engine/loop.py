"""The one loop that runs every protocol: clock, rounds, byte accounting, records, checkpoints.

Nothing is written from inside the loop; it yields one ``Record`` per metric and the runner writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from etree.engine.checkpoint import RunSnapshot, restore_snapshot, take_snapshot
from etree.engine.protocol import Protocol, Record
from etree.engine.workload import Workload
from etree.network.clock import SimClock


def prepare_protocol(protocol: Protocol, workload: Workload) -> None:
    """What a fresh run does before its first round: a new clock, ``setup`` (where every check that
    depends on the workload fails), and the spec's crashes scheduled on that clock."""
    clock = SimClock(workload.network)
    protocol.clock = clock
    protocol.setup(workload)
    clock.schedule_crashes(workload.network.crashes_for(protocol.label), protocol.resolve_node)


def run_protocol(
    protocol: Protocol,
    workload: Workload,
    *,
    rounds: int,
    eval_every: int,
    resume: RunSnapshot | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[RunSnapshot], None] | None = None,
    prepared: bool = False,
) -> Iterator[Record]:
    """Run ``rounds`` rounds, yielding records at round 0, every ``eval_every`` rounds and the last,
    and one row per crash or failover, in the round it happened.

    Every ``checkpoint_every`` rounds (0: never; never after the last round), once the round's
    records are yielded, ``on_checkpoint`` receives a snapshot of the run (its ``state_dict``; a
    protocol without one is not checkpointed). ``resume`` continues a snapshot taken of the same
    spec: ``protocol`` is freshly made, ``load_state_dict`` takes the place of ``setup``, and the
    rounds after the snapshot yield exactly what the uninterrupted run yielded. ``prepared``: the
    caller ran :func:`prepare_protocol` already (a runner sets every protocol up before any runs).
    """
    if resume is None:
        if not prepared:
            prepare_protocol(protocol, workload)
        clock = protocol.clock
        first, sent, counters = 1, 0, {}
    else:
        clock = restore_snapshot(protocol, workload, resume)
        first, sent, counters = resume.round_index + 1, resume.sent, dict(resume.counters)

    def snapshot(round_index: int) -> Iterator[Record]:
        metrics = protocol.evaluate(workload) | counters
        for metric in sorted(metrics):
            yield Record(protocol.label, round_index, clock.now, sent, metric, metrics[metric])

    if resume is None:
        yield from snapshot(0)
    for round_index in range(first, rounds + 1):
        cost = protocol.run_round(round_index)
        if not cost.clocked and workload.network.timing:
            clock.advance(cost.duration_s)
        sent += cost.bytes_sent
        for name, value in (cost.events or {}).items():
            counters[name] = counters.get(name, 0.0) + value
        for at, kind, node in clock.take_events():
            yield Record(protocol.label, round_index, at, sent, kind, float(node))
        if round_index % eval_every == 0 or round_index == rounds:
            yield from snapshot(round_index)
        due = checkpoint_every > 0 and round_index % checkpoint_every == 0 and round_index < rounds
        if on_checkpoint is not None and due:
            taken = take_snapshot(protocol, round_index, sent, counters)
            if taken is None:  # the protocol cannot be checkpointed: it was said once, do not retry
                checkpoint_every = 0
            else:
                on_checkpoint(taken)
