"""A progress bar over protocols and rounds (rich): rounds, simulated time and client-rounds per second."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from experiments.spec import Spec


class RoundProgress:
    """One bar per protocol, advanced as evaluated rounds come in."""

    def __init__(self, spec: Spec, *, enabled: bool = True) -> None:
        self._devices = spec.topology.devices
        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sim {task.fields[sim]:>9.3f} s"),
            TextColumn("{task.fields[rate]:>9,.0f} client-rounds/s"),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self._tasks: dict[str, int] = {}
        self._first_round: dict[str, int] = {}  # 0, or the round a resumed run's first record carries
        for protocol in spec.protocols:
            task = self._progress.add_task(protocol.label, total=spec.rounds, sim=0.0, rate=0.0, start=False)
            self._tasks[protocol.label] = int(task)

    def update(self, label: str, round_index: int, sim_time_s: float) -> None:
        task = self._tasks[label]
        if not self._progress.tasks[task].started:  # structure built (or run resumed): time rounds from here
            self._progress.start_task(task)  # type: ignore[arg-type]
            self._first_round[label] = round_index
        elapsed = self._progress.tasks[task].elapsed or 0.0
        rounds = round_index - self._first_round[label]
        rate = self._devices * rounds / elapsed if elapsed > 0 else 0.0
        self._progress.update(task, completed=round_index, sim=sim_time_s, rate=rate)  # type: ignore[arg-type]

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()


class BatchProgress:
    """One bar over a batch of runs (a sweep, Table 3): runs done of all, the latest finished, elapsed
    time and time left. Rounds inside a run are not shown: a sweep's runs live in other processes."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn(f"{label:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs, last: {task.fields[latest]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._progress.add_task(label, total=None, latest="-")

    def update(self, latest: str, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total, latest=latest)

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()
