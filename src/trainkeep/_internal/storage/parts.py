"""An append-only log kept as immutable part objects, for stores that cannot append (object stores).

Appending by rewriting one object costs O(size of the log) per append. Instead, rows are buffered and each
flush PUTs one new small object ``<log>.parts/<first>-<last>.jsonl`` (``first``..``last`` are flush sequence
numbers), so a flush costs what it writes. Reading a log lists and reads its parts, so their number must stay
small: whenever the newest ``fanout`` parts cover spans of equal length, they are merged into one part (read
them, PUT the merged part, then delete them). Like a binary counter in base ``fanout``, each row is rewritten
at most ``log_fanout(flushes)`` times (4 times for 65,536 flushes at fanout 16) and a log holds fewer than
``fanout * levels`` parts.

If the process dies inside a merge, the merged part and some of its sources coexist; readers drop the
duplicate rows (a row's round number identifies it) and the next writer deletes the covered sources.

Every log is read here (:func:`read_log`), whatever the backend: a local log is one appended file, and may
also have parts when the run was copied from an object store.
"""

from __future__ import annotations

import errno as _errno
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from trainkeep._internal.core.layout import LOG_PARTS_SUFFIX
from trainkeep.errors import StorageError

logger = logging.getLogger(__name__)


class LogStore(Protocol):
    """The part of the Storage surface that logs in parts use (kept apart so this module needs no Storage)."""

    def listdir(self, path: str) -> list[str]: ...
    def read_bytes(self, path: str) -> bytes: ...
    def makedirs(self, path: str) -> None: ...
    def write_atomic(self, path: str, data: bytes) -> None: ...
    def delete_file(self, path: str) -> None: ...

PART_RE = re.compile(r"^(\d{10})-(\d{10})\.jsonl$")


@dataclass(frozen=True, order=True)
class Span:
    """The flush sequence numbers a part holds, ``first`` to ``last`` inclusive."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def name(self) -> str:
        return f"{self.first:010d}-{self.last:010d}.jsonl"

    def covers(self, other: Span) -> bool:
        return self.first <= other.first and other.last <= self.last and self != other


def parse_span(name: str) -> Span | None:
    """Return the span of part file ``name``, or None when it is not a part."""
    match = PART_RE.match(name)
    return Span(int(match.group(1)), int(match.group(2))) if match else None


def ordered_part_names(names: list[str]) -> list[str]:
    """Return the part names among ``names`` in log order (by first sequence, wider parts first)."""
    spans = [s for s in (parse_span(n) for n in names) if s is not None]
    return [s.name for s in sorted(spans, key=lambda s: (s.first, -s.last))]


def read_log(store: LogStore, path: str, threads: int = 1) -> tuple[bytes, list[bytes]]:
    """Return the log at ``path``: the appended file's bytes (b"" when absent) and its parts, in log order.

    Parts are read ``threads`` at a time. A writer may merge parts while we read them: then the listing is
    taken again, up to three times.

    Raises:
        StorageError when the store fails, or when the parts kept changing while read.
    """
    try:
        base = store.read_bytes(path)
    except FileNotFoundError:
        base = b""
    directory = path + LOG_PARTS_SUFFIX
    for _ in range(3):
        paths = [f"{directory}/{name}" for name in ordered_part_names(store.listdir(directory))]
        try:
            if threads <= 1 or len(paths) <= 1:
                return base, [store.read_bytes(p) for p in paths]
            with ThreadPoolExecutor(max_workers=threads) as pool:
                return base, list(pool.map(store.read_bytes, paths))
        except FileNotFoundError:  # a writer merged parts between our listing and our reads
            continue
    raise StorageError("read log", directory, OSError(_errno.EAGAIN, "parts kept changing while read"))


def covered(spans: list[Span]) -> list[Span]:
    """Return the spans that another span covers (sources left over from an interrupted merge)."""
    return [s for s in spans if any(o.covers(s) for o in spans)]


def plan_merge(spans: list[Span], fanout: int) -> list[Span] | None:
    """Return the newest ``fanout`` spans when they are contiguous and of equal length, else None."""
    if len(spans) < fanout:
        return None
    tail = spans[-fanout:]
    length = tail[0].length
    contiguous = all(b.first == a.last + 1 for a, b in zip(tail, tail[1:], strict=False))
    return tail if contiguous and all(s.length == length for s in tail) else None


class PartLog:
    """The writer of one log in parts. Rows are buffered until a durable append, ``max_rows`` rows, or
    ``max_age_s`` seconds; each flush PUTs one part, then merges as :func:`plan_merge` says.

    Buffered rows are in memory only: a crash loses them (they were never promised durable).
    """

    fanout = 16
    max_rows = 256
    max_age_s = 30.0

    def __init__(self, storage: LogStore, path: str) -> None:
        self.storage, self.path, self.directory = storage, path, path + LOG_PARTS_SUFFIX
        self._rows: list[bytes] = []
        self._oldest = 0.0
        self._spans: list[Span] | None = None
        self._guard = threading.Lock()

    def append(self, data: bytes, durable: bool) -> None:
        """Buffer ``data``; flush when ``durable`` or when the buffer is full or old.

        Raises StorageError when the flush fails; the rows stay buffered for the next try.
        """
        with self._guard:
            if data:
                if not self._rows:
                    self._oldest = time.monotonic()
                self._rows.append(data)
            full = len(self._rows) >= self.max_rows or time.monotonic() - self._oldest >= self.max_age_s
            if self._rows and (durable or full):
                self._flush()

    def _flush(self) -> None:
        spans = self._load_spans()
        seq = spans[-1].last + 1 if spans else 0
        span = Span(seq, seq)
        self.storage.write_atomic(f"{self.directory}/{span.name}", b"".join(self._rows))
        self._rows.clear()
        spans.append(span)
        try:
            while (sources := plan_merge(spans, self.fanout)) is not None:
                self._merge(spans, sources)
        except OSError as exc:  # every row is safe in some part; merging again later is only an optimisation
            logger.warning("could not merge the parts of %s (%s); will retry at the next flush", self.path, exc)

    def _load_spans(self) -> list[Span]:
        """List the parts once per writer, deleting sources that an interrupted merge left behind."""
        if self._spans is None:
            self.storage.makedirs(self.directory)  # a no-op on object stores
            spans = sorted(s for s in (parse_span(n) for n in self.storage.listdir(self.directory)) if s)
            for stale in covered(spans):
                self.storage.delete_file(f"{self.directory}/{stale.name}")
            self._spans = [s for s in spans if s not in covered(spans)]
        return self._spans

    def _merge(self, spans: list[Span], sources: list[Span]) -> None:
        paths = [f"{self.directory}/{s.name}" for s in sources]
        with ThreadPoolExecutor(max_workers=8) as pool:
            data = b"".join(pool.map(self.storage.read_bytes, paths))
        merged = Span(sources[0].first, sources[-1].last)
        self.storage.write_atomic(f"{self.directory}/{merged.name}", data)
        del spans[-len(sources):]
        spans.append(merged)
        for path in paths:  # only now, in order: every row is in the merged part
            self.storage.delete_file(path)
