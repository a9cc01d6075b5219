"""Ctrl-C in ``fit()``: stop the workers, close the run, and say in one line what was committed.

The worker processes run in sessions of their own, so a terminal's SIGINT reaches the driver only; the
KeyboardInterrupt it raises unwinds the attempt (which kills the workers and sweeps unfinished rounds), then
``fit()`` closes the run and raises :class:`~trainkeep.errors.TrainingInterrupted` with the summary. Left
uncaught in a script, it prints that one line and no traceback, and the interpreter exits with status 1 (as
Lightning does); caught, it is a KeyboardInterrupt like any other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from trainkeep.errors import TrainingInterrupted


def summary(manager: Any) -> str:
    """Return the one line that says what an interrupted ``fit()`` left committed in ``manager``'s run."""
    if manager is None:
        return "fit() interrupted (Ctrl-C) before the run was opened: nothing was written"
    latest = manager.latest_checkpoint
    kept = len(manager.records())
    where = (f"{kept} checkpoint(s) kept, the latest {latest.path}" if latest is not None
             else "no checkpoint committed")
    return (f"fit() interrupted (Ctrl-C): run {manager.path} closed with {manager.next_round} report round(s) "
            f"committed, {where}; unfinished rounds were discarded. fit() on the same run resumes from there.")


def interrupted(line: str) -> TrainingInterrupted:
    """Return the exception ``fit()`` raises, and make an uncaught one print ``line`` instead of a traceback."""
    previous = sys.excepthook
    if not getattr(previous, "_trainkeep_interrupt", False):

        def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
            if isinstance(value, TrainingInterrupted):
                sys.stderr.write(f"trainkeep: {value}\n")
                return
            previous(kind, value, tb)

        hook._trainkeep_interrupt = True  # type: ignore[attr-defined]
        sys.excepthook = hook
    return TrainingInterrupted(line)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore further Ctrl-C while the workers are stopped and the run is closed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done, then deliver it as the previous handler would have.

    The controller handles its events (a commit among them) inside this block, so a Ctrl-C lands between two
    events, never in the middle of a commit that the clean-up would then take for an unfinished round.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, received[0])
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)
