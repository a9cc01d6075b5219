"""The run's history writer: one row per completed round appended to ``history.jsonl``, made durable in batches.

A metrics-only round's row is appended without fsync: it becomes durable with the next checkpoint's commit (its
manifest is written only after every earlier row is flushed) or at close. The row of a committed checkpoint whose
append failed is kept and written first with the next append: retention may delete that checkpoint, and its
manifest with it, before the next open could repair the history from it.
"""

from __future__ import annotations

import time
from typing import Any

from trainkeep._internal.core.layout import HISTORY_NAME
from trainkeep._internal.core.manifest import history_line
from trainkeep._internal.storage import Storage


class HistoryWriter:
    """Append the history rows of the run at ``run_path`` on ``storage`` (one writer per run, not thread safe)."""

    def __init__(self, storage: Storage, run_path: str) -> None:
        self.storage = storage
        self.path = storage.join(run_path, HISTORY_NAME)
        self._unsynced = False  # rows of metrics-only rounds appended since the last durable append
        self._unwritten = b""  # rows of committed checkpoints whose append failed: they go with the next one

    def flush_owed(self) -> None:
        """Flush (see :meth:`flush`) only when some appended row is not yet durable, or not yet written."""
        if self._unsynced or self._unwritten:
            self.flush()

    def append(self, round_index: int, metrics: dict[str, Any], name: str | None, durable: bool) -> None:
        """Append the row of a completed round; ``name`` is its committed checkpoint, or None.

        Raises StorageError when the append fails; a checkpoint's row is then kept for the next append.
        """
        line = history_line(round_index, time.time(), metrics, name)
        if name is not None:
            self._unwritten, line = self._unwritten + line, b""
        self.storage.append(self.path, self._unwritten + line, durable=durable)
        self._unwritten, self._unsynced = b"", not durable

    def flush(self) -> None:
        """Make every row appended so far durable (with the rows a failed append owes, first).

        Raises StorageError when the append or its fsync fails; the owed rows are kept.
        """
        self.storage.append(self.path, self._unwritten, durable=True)
        self._unwritten, self._unsynced = b"", False
