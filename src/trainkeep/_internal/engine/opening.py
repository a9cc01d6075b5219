"""Opening a run: load it (or start a new one), finish interrupted deletes, sweep debris, repair the history.

Everything here runs while the opener holds the run's lock and before the first report. Each step is
idempotent: a crash anywhere inside leaves a run that the next open repairs the same way.
"""

from __future__ import annotations

import logging
import time

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.history_rows import history_line
from trainkeep._internal.core.layout import (
    HISTORY_NAME,
    INTERNAL_DIR,
    MANIFEST_NAME,
    RUN_INDEX_NAME,
    TEMP_SUFFIX,
)
from trainkeep._internal.core.manifest import HistoryMark, RunIndex
from trainkeep._internal.engine.history import HistoryScan
from trainkeep._internal.engine.run import RunState, is_run, note_config_change, read_run
from trainkeep._internal.storage import Storage
from trainkeep.errors import StorageError

logger = logging.getLogger(__name__)


def prepare_run_dir(storage: Storage, path: str) -> None:
    """Create the run directory and its internal directory.

    Raises:
        StorageError when ``path`` is a file, or when storage fails.
    """
    if storage.exists(path) and not storage.isdir(path):
        raise StorageError("open run", path, FileExistsError(17, "the run path exists and is a file"))
    storage.makedirs(storage.join(path, INTERNAL_DIR))


def open_run(storage: Storage, path: str, config: CheckpointConfig) -> RunState:
    """Load the run at ``path`` (or start a new one), finish interrupted deletes, sweep debris, repair history.

    The returned state's index carries ``config``, status "running" and the next round; the caller writes it.

    Raises:
        StorageError when storage fails; CorruptRunError / IncompatibleRunError from reading the run.
    """
    if is_run(storage, path):
        state = read_run(storage, path, config)
    else:
        now = time.time()
        state = RunState(path, RunIndex(config.to_dict(), created=now, updated=now),
                         HistoryScan(0, 0, [], 0, None), storage=storage)
    finish_retiring(storage, path, state)
    sweep(storage, path, state)
    length = repair_history(storage, path, state)
    if appended := note_config_change(storage, path, state, config):  # warns and records, before any deletion
        length += appended
        state.scan.durable_bytes = length  # its append was durable
    state.history_mark = _durable_mark(storage, path, state, length)
    state.index.status = "running"
    state.index.next_round = state.next_round
    return state


def finish_retiring(storage: Storage, path: str, state: RunState) -> None:
    """Finish deleting the checkpoints that the index lists as retiring (a crash interrupted retention)."""
    for name in list(state.index.retiring):
        delete_checkpoint(storage, path, name)
    if state.index.retiring:
        storage.sync_dir(path)  # the removals are durable before the index stops listing them
    state.index.retiring = [n for n in state.index.retiring if storage.exists(storage.join(path, n))]


def sweep(storage: Storage, path: str, state: RunState) -> None:
    """Delete our own debris: directories with an intent record and no manifest, and our temp files."""
    internal = storage.join(path, INTERNAL_DIR)
    committed = {c.name for c in state.index.checkpoints}
    for entry in storage.listdir(internal):
        if not (entry.startswith("intent-") and entry.endswith(".json")):
            if entry.endswith(TEMP_SUFFIX):
                storage.delete_file(storage.join(internal, entry))
            continue
        name = entry[len("intent-") : -len(".json")]
        directory = storage.join(path, name)
        if name not in committed and not storage.exists(storage.join(directory, MANIFEST_NAME)):
            logger.info("sweeping %s: an interrupted report left it without a manifest", directory)
            storage.delete_tree(directory)
        storage.delete_file(storage.join(internal, entry))
    for entry in storage.listdir(path):  # only temp files of our own files: a user's file stays
        if entry.endswith(TEMP_SUFFIX) and entry.startswith((RUN_INDEX_NAME, HISTORY_NAME)):
            storage.delete_file(storage.join(path, entry))


def repair_history(storage: Storage, path: str, state: RunState) -> int:
    """Truncate a torn last history line and append the rows of committed checkpoints the history lacks.

    Only checkpoints of rounds the index's mark does not vouch for are looked at (all of them without a mark).
    Returns the history's length in bytes afterwards (as scanned, for a history kept in parts).
    """
    scan = state.scan
    history_path = storage.join(path, HISTORY_NAME)
    if scan.valid_bytes < scan.total_bytes:
        logger.info("truncating a torn last line of %s", history_path)
        storage.truncate(history_path, scan.valid_bytes)
    length = scan.valid_bytes
    rounds = {row["round"] for row in scan.rows}
    for entry in state.index.checkpoints:
        if entry.round >= scan.checked_from and entry.round not in rounds:
            row = history_line(entry.round, entry.time, entry.metrics, entry.name)
            storage.append(history_path, row, durable=True)
            length += len(row)
            scan.durable_bytes = length  # the fsync made every earlier byte durable too
    return length


def _durable_mark(storage: Storage, path: str, state: RunState, length: int) -> HistoryMark | None:
    """Return the mark of the opened run's history (None where it is kept in parts), made durable first.

    Rows read past the old mark may still be only in the page cache (a writer that died left them unsynced):
    they are synced before a mark can vouch for them.
    """
    if not storage.is_local:
        return None
    if length > state.scan.durable_bytes:
        storage.append(storage.join(path, HISTORY_NAME), b"", durable=True)
    return HistoryMark(length, state.next_round)


def delete_checkpoint(storage: Storage, path: str, name: str) -> None:
    """Delete checkpoint ``name`` of the run at ``path``: its manifest first, then its files.

    A failure is logged, not raised: the caller keeps the name in the index's ``retiring`` list, and the next
    open retries the delete.
    """
    directory = storage.join(path, name)
    try:
        storage.delete_file(storage.join(directory, MANIFEST_NAME))
        storage.sync_dir(directory) if storage.exists(directory) else None
        storage.delete_tree(directory)
    except OSError as exc:  # keep purging the others; the name stays in `retiring` and is retried on open
        logger.warning("could not delete checkpoint %s of run %s (%s); will retry", name, path, exc)
