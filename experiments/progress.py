"""A progress bar over protocols and rounds (rich), silent when disabled or not on a terminal."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experiments.spec import Spec


class RoundProgress:
    """One bar per protocol, advanced as evaluated rounds come in."""

    def __init__(self, spec: Spec, *, enabled: bool = True) -> None:
        self._rounds = spec.rounds
        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self._tasks: dict[str, int] = {}
        for protocol in spec.protocols:
            self._tasks[protocol.label] = int(self._progress.add_task(protocol.label, total=spec.rounds))

    def update(self, label: str, round_index: int) -> None:
        self._progress.update(self._tasks[label], completed=round_index)  # type: ignore[arg-type]

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()
