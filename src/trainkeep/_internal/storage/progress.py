"""Progress of one checkpoint transfer: a rich progress bar for large ones on a terminal, and its stats.

The bar appears only when the transfer is at least ``PROGRESS_THRESHOLD`` bytes and stderr is a terminal;
otherwise nothing is drawn and the manager logs one INFO line per committed checkpoint (size, time, rate).
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any

from trainkeep._internal.storage.base import TransferStats

PROGRESS_THRESHOLD = 256 * 1024 * 1024


def wants_bar(total_bytes: int, stream: Any = None) -> bool:
    """Return True when a transfer of ``total_bytes`` should draw a progress bar on ``stream`` (stderr)."""
    stream = sys.stderr if stream is None else stream
    try:
        is_tty = bool(stream.isatty())
    except (AttributeError, ValueError):
        is_tty = False
    return total_bytes >= PROGRESS_THRESHOLD and is_tty


class Transfer:
    """Count the bytes of one transfer (thread-safe) and draw a bar when :func:`wants_bar` says so.

    Use as a context manager; ``advance`` is the per-chunk callback; ``stats()`` gives the TransferStats.
    """

    def __init__(self, label: str, total_bytes: int, files: int, moved: bool = False) -> None:
        self.label, self.total, self.files, self.moved = label, total_bytes, files, moved
        self.done = 0
        self._guard = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        self._start = time.perf_counter()
        self._end: float | None = None

    def __enter__(self) -> Transfer:
        if wants_bar(self.total):
            self._bar, self._task = _start_bar(self.label, self.total)
        self._start = time.perf_counter()
        return self

    def advance(self, nbytes: int) -> None:
        with self._guard:
            self.done += nbytes
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._end = time.perf_counter()
        if self._bar is not None:
            self._bar.stop()

    def stats(self) -> TransferStats:
        end = self._end if self._end is not None else time.perf_counter()
        return TransferStats(self.done, self.files, end - self._start, self.moved, self._bar is not None)


def _start_bar(label: str, total: int) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, task
