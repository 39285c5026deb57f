"""Ctrl-C and SIGTERM: both end a run the same way, with its clean-up done and one line said.

``etree`` turns SIGTERM into :class:`Terminated`, a ``KeyboardInterrupt``, so every ``finally`` and
``except BaseException`` that removes a staging folder or stops a backend runs for it as for Ctrl-C
(a plain SIGTERM kills the process where it stands). The few renames that swap a finished folder into
place run with both signals held back (:func:`interrupts_deferred`), so an interrupt lands before or
after the swap, never between its two renames.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where it was received."""


class RunInterrupted(KeyboardInterrupt):
    """An interrupted run: ``str()`` is the line to show (where it stopped and how to go on)."""

    def __init__(self, line: str, signum: int) -> None:
        super().__init__(line)
        self.signum = signum


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    signum = interrupt.signum if isinstance(interrupt, RunInterrupted) else signal_of(interrupt)
    return 128 + signum


def signal_of(interrupt: BaseException) -> int:
    return int(signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"signal {signum}")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the ``etree`` command runs, SIGTERM raises :class:`Terminated` (main thread only:
    elsewhere the handler cannot be set, and the default stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then act on the first that came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[signal.Signals] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))

    previous = {signum: signal.signal(signum, hold) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(received[0])
