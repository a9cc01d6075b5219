"""The run's history: one row per completed round appended to ``history.jsonl``, made durable in batches.

Writing: a metrics-only round's row is appended without fsync: it becomes durable with the next checkpoint's
commit (its manifest is written only after every earlier row is flushed) or at close. The row of a committed
checkpoint whose append failed is kept and written first with the next append: retention may delete that
checkpoint, and its manifest with it, before the next open could repair the history from it.

Reading at open: the run index carries a :class:`~trainkeep._internal.core.manifest.HistoryMark`, the length of the history's
durable prefix at the last index write. Opening a run checks the line that ends there and reads only what
follows (:func:`scan_history`), so its cost does not grow with the run. The whole history is read only by those
who want every row (``metrics_dataframe``, ``plot``, ``CheckpointManager.history``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from trainkeep._internal.core.history_rows import history_line, parse_history, parse_history_chunk
from trainkeep._internal.core.layout import HISTORY_NAME
from trainkeep._internal.core.manifest import HistoryMark
from trainkeep._internal.storage import Storage
from trainkeep.errors import StorageError

logger = logging.getLogger(__name__)

# Bytes read before a mark to check the line that ends there (and to find the last rows): a row longer than
# the first window is looked for in the next, larger one; past the last, the mark is not used.
MARK_WINDOWS = (16 * 1024, 1024 * 1024, 16 * 1024 * 1024)
# Metrics-only rounds are made durable and marked (a run index write) once this many bytes follow the mark, so
# that a reopen after a crash reads at most about this much, whatever the run's length and without checkpoints.
MARK_EVERY_BYTES = 1024 * 1024


class HistoryWriter:
    """Append the history rows of the run at ``run_path`` on ``storage`` (one writer per run, not thread safe).

    It also keeps the :attr:`mark` that the run index records: the length of the history's durable prefix, as
    far as this writer knows it, and the round before which every committed checkpoint's row lies in it.
    """

    def __init__(self, storage: Storage, run_path: str) -> None:
        self.storage = storage
        self.path = storage.join(run_path, HISTORY_NAME)
        self._unsynced = False  # rows of metrics-only rounds appended since the last durable append
        self._unwritten = b""  # rows of committed checkpoints whose append failed: they go with the next one
        self._length: int | None = None  # the history's length in bytes; None when unknown (no new marks)
        self._next = 0  # one past the highest round this writer wrote
        self.mark: HistoryMark | None = None

    def resume(self, mark: HistoryMark | None) -> None:
        """Continue the history of an opened run, whose durable, repaired history ``mark`` describes.

        ``mark`` is None where the history is kept in parts (object stores): then no marks are kept.
        """
        self.mark = mark
        self._length = mark.bytes if mark is not None else None
        self._next = mark.round if mark is not None else 0

    @property
    def mark_due(self) -> bool:
        """Return True when :data:`MARK_EVERY_BYTES` have been appended since the mark (flush, then write the
        index)."""
        return self.mark is not None and self._length is not None and (
            self._length - self.mark.bytes >= MARK_EVERY_BYTES)

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
        self._next = max(self._next, round_index + 1)
        self._write(self._unwritten + line, durable)

    def append_event(self, line: bytes) -> None:
        """Append a history row of another kind (a validation state) durably, after any rows still owed.

        Through the writer, so that the mark the index records keeps counting every byte of the history.

        Raises StorageError when the append fails.
        """
        self._write(self._unwritten + line, True)

    def flush(self) -> None:
        """Make every row appended so far durable (with the rows a failed append owes, first).

        Raises StorageError when the append or its fsync fails; the owed rows are kept.
        """
        self._write(self._unwritten, True)

    def _write(self, data: bytes, durable: bool) -> None:
        try:
            self.storage.append(self.path, data, durable=durable)
        except BaseException:
            self._length = None  # a failed append may have left bytes we cannot count: keep the last mark
            raise
        self._unwritten, self._unsynced = b"", not durable
        if self._length is not None:
            self._length += len(data)
            if durable:  # every row written so far is durable and none is owed
                self.mark = HistoryMark(self._length, self._next)


@dataclass
class HistoryScan:
    """What opening a run reads from its history.

    ``rows`` are the round rows read, by round: all of them, or (``marked``) those after the index's mark.
    Committed checkpoints of round ``checked_from`` or later must have a row among them; those of earlier
    rounds have one before the mark. ``durable_bytes`` of the history are known durable.
    """

    valid_bytes: int
    total_bytes: int
    rows: list[dict[str, Any]]
    next_round: int
    last_row: dict[str, Any] | None
    checked_from: int = 0
    durable_bytes: int = 0
    marked: bool = False


def scan_history(storage: Storage, run_path: str, mark: HistoryMark | None) -> HistoryScan:
    """Read what opening the run at ``run_path`` needs from its history, without changing anything.

    With a ``mark`` (local disk), only the line ending at the mark (checked) and what follows are read; a mark
    that does not check out is ignored with a log line, and the whole history is read.

    Raises:
        StorageError when storage fails.
    """
    path = storage.join(run_path, HISTORY_NAME)
    if mark is not None and storage.is_local:
        scan = _scan_from_mark(storage, path, mark)
        if scan is not None:
            return scan
        logger.info("the run index's history mark (%d bytes) does not match %s; reading the whole history",
                    mark.bytes, path)
    raw, parts = storage.read_log(path)
    rows, valid = parse_history(raw, parts)
    last = rows[-1] if rows else None
    return HistoryScan(valid, len(raw), rows, last["round"] + 1 if last else 0, last)


def _scan_from_mark(storage: Storage, path: str, mark: HistoryMark) -> HistoryScan | None:
    """Return the scan of the history after ``mark``, or None when the history does not match the mark."""
    total = _size(storage, path)
    if total < mark.bytes:  # shorter than the index says it was: not the history the mark describes
        return None
    for window in MARK_WINDOWS:
        start = max(0, mark.bytes - window)
        data = _read_from(storage, path, start, total)
        if len(data) != total - start:
            return None
        cut = mark.bytes - start
        first = 0 if start == 0 else data.find(b"\n", 0, cut) + 1  # the first whole line in the window
        if start > 0 and first in (0, cut):
            continue  # no whole line ends before the mark within the window: try a larger one
        before, _, checked = parse_history_chunk(data[first:cut])
        if first + checked != cut:
            return None  # the mark does not end a whole, valid line
        after, _, valid = parse_history_chunk(data[cut:])
        latest = {**before, **after}
        if not latest and start > 0:
            continue  # only rows of another kind in the window: look further back for the last report
        rows = [after[r] for r in sorted(after)]
        last = latest[max(latest)] if latest else None
        next_round = max(mark.round, last["round"] + 1 if last else 0)
        return HistoryScan(mark.bytes + valid, total, rows, next_round, last, mark.round, mark.bytes, True)
    return None


def _size(storage: Storage, path: str) -> int:
    try:
        return storage.size(path)
    except FileNotFoundError:
        return 0
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError("stat", path, exc) from exc


def _read_from(storage: Storage, path: str, start: int, end: int) -> bytes:
    """Return bytes ``start`` to ``end`` of ``path`` (fewer when it is shorter now)."""
    if end <= start:
        return b""
    try:
        return storage.read_range(path, start, end)
    except FileNotFoundError:
        return b""


# ---------------------------------------------------------------------------------------------- every row, fast

_ROW_COLUMNS = ("round", "time", "checkpoint_dir_name")


def read_history_frame(storage: Storage, run_path: str) -> Any:
    """Return the run's history as ``metrics_dataframe`` lays it out, read by pyarrow's JSON-lines reader.

    Returns None whenever the fast path could differ from reading row by row (then the caller does that): no
    pyarrow, a history kept in parts, a line that does not parse (it ends the history), a round out of order or
    twice, a validation row (its metrics replace its round's), a metric that is not a number or a whole column of strings or booleans, an empty dict, or a
    flattened name that two metrics share or that clashes with ``round``/``time``/``checkpoint_dir_name``.

    Raises:
        StorageError when storage fails.
    """
    if not storage.is_local:
        return None
    try:
        import pyarrow as pa
        import pyarrow.json as pa_json
    except ImportError:
        return None
    path = storage.join(run_path, HISTORY_NAME)
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        return None
    raw = raw[: raw.rfind(b"\n") + 1]  # a torn last line is not a row
    if not raw:
        return None
    schema = pa.schema([("round", pa.int64()), ("time", pa.float64()), ("checkpoint", pa.string()),
                        ("kind", pa.string())])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    try:
        table = pa_json.read_json(pa.py_buffer(raw), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return _frame_of(pa, table)


def _frame_of(pa: Any, table: Any) -> Any:
    """Return the DataFrame of a parsed history ``table``, or None when it needs the row-by-row reader."""
    import pyarrow.compute as pc

    if "kind" in table.column_names:
        if pc.any(pc.equal(table["kind"], "validation")).as_py():
            return None  # a validation's metrics replace its round's, as history_rows.parse_history does
        table = table.filter(pc.is_null(table["kind"]))
    if table.num_rows == 0 or "metrics" not in table.column_names or table["metrics"].null_count:
        return None
    rounds = table["round"]
    if rounds.null_count or (table.num_rows > 1 and not pc.all(pc.greater(rounds[1:], rounds[:-1])).as_py()):
        return None
    columns: dict[str, Any] = {"round": rounds, "time": table["time"], "checkpoint_dir_name": table["checkpoint"]}
    metrics = table["metrics"].combine_chunks()
    if not pa.types.is_struct(metrics.type) or not _add_leaves(pa, "", metrics, columns):
        return None
    if len(columns) != len(_ROW_COLUMNS) + _count_leaves(pa, metrics.type):
        return None  # two metrics flatten to one name, or a metric is named like a row column
    # Metrics in the order their first value appears, as in a DataFrame built from the rows.
    first = {name: pc.index(pc.is_valid(columns[name]), True).as_py() for name in columns}
    order = [*_ROW_COLUMNS, *sorted((n for n in columns if n not in _ROW_COLUMNS),
                                    key=lambda n: first[n] if first[n] >= 0 else table.num_rows)]
    return pa.table({name: columns[name] for name in order}).to_pandas()


def _add_leaves(pa: Any, prefix: str, struct: Any, columns: dict[str, Any]) -> bool:
    """Add the leaves of ``struct`` to ``columns`` by their "/"-joined names; False for a type to leave alone."""
    for i in range(struct.type.num_fields):
        name, child = prefix + struct.type.field(i).name, struct.field(i)
        if pa.types.is_struct(child.type):
            if child.type.num_fields == 0 or child.null_count or not _add_leaves(pa, name + "/", child, columns):
                return False
            continue
        numeric = pa.types.is_integer(child.type) or pa.types.is_floating(child.type)
        whole = (pa.types.is_string(child.type) or pa.types.is_boolean(child.type)) and not child.null_count
        if not (numeric or whole):
            return False
        columns.setdefault(name, child)
    return True


def _count_leaves(pa: Any, struct_type: Any) -> int:
    return sum(_count_leaves(pa, f.type) if pa.types.is_struct(f.type) else 1 for f in struct_type)
