"""One recorded storage operation, and what a system-call hook needs of the recorder (no import of faults.py).

``faults.FaultyStorage`` records operations; ``syscalls.FaultySyscalls`` reports the system calls of a local disk
to it through the :class:`Recorder` protocol, so the two modules do not import each other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Op:
    """One storage operation, as recorded by FaultyStorage.

    ``level`` is "call" (a Storage method) or "syscall"; ``index`` its 1-based number (0 for a mark, which is
    not an operation); ``returned_at`` the number of operations started when a call returned (None while it
    runs, or when it raised); ``data`` the bytes a write put on disk (recorded with ``record_data``).
    """

    level: str
    name: str
    path: str
    dest: str = ""
    index: int = 0
    fd: int = -1
    offset: int = -1
    size: int = -1
    data: bytes | None = None
    site: tuple[str, ...] = ()
    returned_at: int | None = None
    dropped: bool = False
    error: str = ""
    pid: int = 0
    partial: int = 0  # an errno to raise after writing half of the data (a disk that fills up mid-write)

    def __str__(self) -> str:
        where = f"{self.path} -> {self.dest}" if self.dest else self.path
        flags = " (dropped)" if self.dropped else f" (failed: {self.error})" if self.error else ""
        return f"#{self.index} {self.level} {self.name} {where}{flags}"


class Recorder(Protocol):
    """What FaultySyscalls needs of the FaultyStorage that installed it."""

    mutex: threading.RLock
    record_data: bool  # keep the bytes each write put on disk (for the power-loss states)

    def enter(self, op: Op) -> Op:
        """Number ``op``, apply any fault planned for it, and return it (``dropped``/``partial`` set)."""
        ...
