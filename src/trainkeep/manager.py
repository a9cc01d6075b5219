"""CheckpointManager: the engine. It commits checkpoints, records history, applies retention, and resumes.

Order of a checkpoint round (DESIGN §5), and what a crash at each point leaves:

1. validate metrics, score and name                 -> nothing written
2. write the intent record, create the directory     -> debris that the next open sweeps
3. copy the files, fsync them and the directories    -> debris that the next open sweeps
4. write the manifest atomically (the commit point)  -> the checkpoint exists
5. append the history row, replace the run index     -> the next open repairs both from the manifest
6. retention: index first, then manifests, then files -> orphans the next open finishes deleting
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from trainkeep.checkpoint import Checkpoint
from trainkeep.config import CheckpointConfig
from trainkeep.errors import (
    CheckpointExistsError,
    ConfigTypeError,
    StorageError,
    TrainkeepError,
)
from trainkeep.layout import (
    HISTORY_NAME,
    INTERNAL_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    RUN_INDEX_NAME,
    TEMP_SUFFIX,
    default_checkpoint_name,
    intent_name,
    validate_checkpoint_name,
)
from trainkeep.manifest import FileEntry, IndexEntry, Manifest, RunIndex, encode, history_line
from trainkeep.metrics import check_score, normalize_metrics
from trainkeep.retention import Decision, Record, best_checkpoints, decide
from trainkeep.run import RunState, is_run, read_history, read_manifest, read_run, verify_checkpoint
from trainkeep.storage import Storage, list_source_files, resolve
from trainkeep.storage.base import TransferStats, format_bytes

logger = logging.getLogger(__name__)


class CheckpointManager:
    """Persist, keep and resume the checkpoints of one run, in any training loop.

    Opening a path that holds a run resumes it: its committed checkpoints, report index and history continue,
    and debris of an interrupted report is swept. Only one manager (or trainer) may hold a run at a time.

    Args:
        path: the run directory, a local path or an fsspec URL.
        checkpoint_config: retention settings; a default config keeps everything.
        storage_filesystem: an explicit fsspec (or pyarrow) filesystem for ``path``.

    Raises:
        RunLockedError when another live writer holds the run; StorageError when the path is unusable;
        IncompatibleRunError when the run was written by a newer trainkeep.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        checkpoint_config: CheckpointConfig | None = None,
        storage_filesystem: Any = None,
        *,
        storage: Storage | None = None,
    ) -> None:
        if checkpoint_config is None:
            checkpoint_config = CheckpointConfig()
        elif not isinstance(checkpoint_config, CheckpointConfig):
            raise ConfigTypeError(
                f"checkpoint_config must be a trainkeep.CheckpointConfig, got {type(checkpoint_config).__name__}"
            )
        self.config = checkpoint_config
        resolved_storage, self.path = resolve(path, storage_filesystem)
        self.storage: Storage = storage or resolved_storage
        self.protected: set[str] = set()
        self._mutex = threading.RLock()
        self._closed = False
        self._retiring_on_disk: set[str] = set()  # the `retiring` list as last written to the index
        self._history_unsynced = False  # rows of metrics-only rounds appended since the last durable append
        self._unwritten = b""  # rows of committed checkpoints whose append failed: they go with the next one
        self._prepare_run_dir()
        self._lock = self.storage.lock(self.storage.join(self.path, INTERNAL_DIR, LOCK_NAME))
        try:
            self._state = self._open_state()
        except BaseException:
            self._lock.release()
            raise
        self._next_round = self._state.next_round
        self._state.history = []  # read back from storage on demand (see `history`): constant memory per round
        self._committed_names = {c.name for c in self._state.index.checkpoints}

    # ------------------------------------------------------------------------------------------ opening

    def _prepare_run_dir(self) -> None:
        storage, path = self.storage, self.path
        if storage.exists(path) and not storage.isdir(path):
            raise StorageError("open run", path, FileExistsError(17, "the run path exists and is a file"))
        storage.makedirs(storage.join(path, INTERNAL_DIR))

    def _open_state(self) -> RunState:
        """Load the run (or start a new one), finish interrupted deletes, sweep debris, repair history."""
        storage, path = self.storage, self.path
        if is_run(storage, path):
            state = read_run(storage, path, self.config)
        else:
            state = RunState(path, _new_index(self.config), [], 0, 0, index_changed=True)
        self._finish_retiring(state)
        self._sweep(state)
        self._repair_history(state)
        state.index.checkpoint_config = self.config.to_dict()
        state.index.status = "running"
        state.index.next_round = state.next_round
        self._write_index(state)
        if state.index.checkpoints:
            logger.info("resuming run %s: %d committed checkpoints, next report index %d",
                        path, len(state.index.checkpoints), state.next_round)
        return state

    def _finish_retiring(self, state: RunState) -> None:
        for name in list(state.index.retiring):
            self._delete_checkpoint_files(name)
        if state.index.retiring:
            self.storage.sync_dir(self.path)  # the removals are durable before the index stops listing them
        state.index.retiring = [n for n in state.index.retiring if self.storage.exists(self._dir(n))]

    def _sweep(self, state: RunState) -> None:
        """Delete our own debris: directories with an intent record and no manifest, and our temp files."""
        storage, internal = self.storage, self.storage.join(self.path, INTERNAL_DIR)
        committed = {c.name for c in state.index.checkpoints}
        for entry in storage.listdir(internal):
            if not (entry.startswith("intent-") and entry.endswith(".json")):
                if entry.endswith(TEMP_SUFFIX):
                    storage.delete_file(storage.join(internal, entry))
                continue
            name = entry[len("intent-") : -len(".json")]
            has_manifest = storage.exists(storage.join(self._dir(name), MANIFEST_NAME))
            if name not in committed and not has_manifest:
                logger.info("sweeping %s: an interrupted report left it without a manifest", self._dir(name))
                storage.delete_tree(self._dir(name))
            storage.delete_file(storage.join(internal, entry))
        for entry in storage.listdir(self.path):  # only temp files of our own files: a user's file stays
            if entry.endswith(TEMP_SUFFIX) and entry.startswith((RUN_INDEX_NAME, HISTORY_NAME)):
                storage.delete_file(storage.join(self.path, entry))

    def _repair_history(self, state: RunState) -> None:
        history_path = self.storage.join(self.path, HISTORY_NAME)
        if state.history_valid_bytes < state.history_total_bytes:
            logger.info("truncating a torn last line of %s", history_path)
            self.storage.truncate(history_path, state.history_valid_bytes)
        rounds = {row["round"] for row in state.history}
        for entry in state.index.checkpoints:
            if entry.round not in rounds:
                row = history_line(entry.round, entry.time, entry.metrics, entry.name)
                self.storage.append(history_path, row, durable=True)
                state.history.append({"round": entry.round, "time": entry.time, "checkpoint": entry.name,
                                      "metrics": entry.metrics})

    # ------------------------------------------------------------------------------------------ reporting

    def report(
        self,
        metrics: Mapping[str, Any],
        checkpoint: Checkpoint | None = None,
        checkpoint_dir_name: str | None = None,
    ) -> Checkpoint | None:
        """Record one round's metrics and, when given, commit its checkpoint; then apply retention.

        The checkpoint's files are copied into ``<run>/<checkpoint_dir_name or checkpoint_NNNNNN>/``; the
        source directory is left as it is. Returns the committed Checkpoint, or None for a metrics-only round.

        If the process dies inside, the checkpoint is either committed whole or invisible, and every checkpoint
        committed before is intact; the next open sweeps what was half-written.

        Raises:
            InvalidMetricsError / ScoreTypeError (TypeError) for bad metrics, InvalidCheckpointNameError /
            CheckpointExistsError for a bad or taken name (all before any write); StorageError when storage
            fails, in which case nothing new is visible and nothing old was deleted.
        """
        with self._mutex:
            clean, name = self.validate_report(metrics, checkpoint, checkpoint_dir_name)
            if checkpoint is None:
                self.record(clean)
                return None
            assert name is not None
            with checkpoint.as_directory() as src:
                files = list_source_files(src)
                dest = self.stage(name)
                try:
                    put = self.storage.put_tree(src, dest, files)
                except BaseException:
                    self.abort(name)
                    raise
            return self.commit(name, clean, put.entries, put.stats)

    def validate_report(
        self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None, checkpoint_dir_name: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """Check a report before anything is written; return the normalised metrics and the checkpoint name."""
        self._check_open()
        clean = normalize_metrics(metrics)
        check_score(clean, self.config.checkpoint_score_attribute)
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise ConfigTypeError(f"checkpoint must be a trainkeep.Checkpoint or None, got "
                                  f"{type(checkpoint).__name__}")
        if checkpoint_dir_name is not None:
            validate_checkpoint_name(checkpoint_dir_name)
        if checkpoint is None:
            return clean, None
        name = checkpoint_dir_name or default_checkpoint_name(self._next_round)
        self._check_name_free(name)
        return clean, name

    def _check_name_free(self, name: str) -> None:
        if name in self._committed_names:
            raise CheckpointExistsError(
                f"checkpoint_dir_name {name!r} is already a committed checkpoint of run {self.path}; "
                "checkpoints are never overwritten. Pick a unique name per report (e.g. include the epoch)."
            )
        if self.storage.exists(self._dir(name)):
            raise CheckpointExistsError(
                f"{self._dir(name)} already exists and is not a checkpoint of this run; trainkeep will not "
                "write into it. Move it away or pick another checkpoint_dir_name."
            )

    def record(self, metrics: dict[str, Any]) -> None:
        """Record a metrics-only round (already validated). Not fsynced: durable with the next commit."""
        with self._mutex:
            self._check_open()
            round_index = self._next_round
            self._append_history(round_index, metrics, None, durable=False)
            self._next_round += 1

    def stage(self, name: str) -> str:
        """Write the intent record for checkpoint ``name`` and create its directory; return the directory."""
        with self._mutex:
            self._check_open()
            if name in self._retiring_on_disk:
                # The name of a checkpoint that retention deleted is reused: the index on storage must stop
                # listing it as retiring before the new one commits, or the next open would delete the new one.
                self._write_index(self._state)
            intent = self.storage.join(self.path, INTERNAL_DIR, intent_name(name))
            self.storage.write_atomic(intent, b'{"checkpoint": "%s"}\n' % name.encode())
            dest = self._dir(name)
            self.storage.makedirs(dest)
            return dest

    def abort(self, name: str) -> None:
        """Remove the staged, uncommitted directory ``name`` and its intent (a failed or discarded round)."""
        with self._mutex:
            if name in self._committed_names:
                return
            try:
                self.storage.delete_tree(self._dir(name))
                self.storage.delete_file(self.storage.join(self.path, INTERNAL_DIR, intent_name(name)))
            except OSError as exc:
                logger.warning("could not remove the debris of %s (%s); the next open sweeps it", name, exc)

    def commit(self, name: str, metrics: dict[str, Any], files: list[FileEntry],
               transfer: TransferStats | None = None) -> Checkpoint:
        """Commit the staged checkpoint ``name`` whose ``files`` are all written, then apply retention.

        ``transfer`` (what ``put_tree`` returned, when this process wrote the files) goes into the log line.

        Steps: make the directory durable, write the manifest (the commit point), append the history row,
        replace the index, drop the intent, run retention. A failure before the manifest removes the staged
        directory (nothing new is visible); after it, the checkpoint stays committed and the error is raised.
        """
        with self._mutex:
            self._check_open()
            storage, dest, round_index = self.storage, self._dir(name), self._next_round
            manifest = self._publish(name, round_index, metrics, files)
            self._committed_names.add(name)
            self._next_round += 1
            self._state.index.checkpoints.append(IndexEntry.from_manifest(manifest))
            self._append_history(round_index, metrics, name, durable=True)
            self._write_index(self._state)
            storage.delete_file(storage.join(self.path, INTERNAL_DIR, intent_name(name)))
            self._apply_retention()
            logger.log(logging.DEBUG if transfer and transfer.showed_progress else logging.INFO,
                       "committed checkpoint %s of run %s: %s", name, self.path,
                       transfer.describe() if transfer else format_bytes(manifest.size))
            return Checkpoint(dest, storage.fs)

    def _publish(self, name: str, round_index: int, metrics: dict[str, Any], files: list[FileEntry]) -> Manifest:
        """Make the staged files and earlier history rows durable, then write the manifest (the commit point).

        On any failure the round is aborted (its directory and intent removed) and the error raised.
        """
        storage, dest = self.storage, self._dir(name)
        try:
            storage.sync_dir(dest)
            storage.sync_dir(self.path)
            if self._history_unsynced or self._unwritten:  # earlier rounds' rows must not be lost while
                self._flush_history()  # this later one commits
            manifest = Manifest(name, round_index, time.time(), metrics, tuple(sorted(files, key=lambda f: f.path)))
            storage.write_atomic(storage.join(dest, MANIFEST_NAME), encode(manifest.to_dict()))
        except BaseException:
            self.abort(name)  # the round fails whole: nothing new becomes visible
            raise
        return manifest

    def _append_history(self, round_index: int, metrics: dict[str, Any], name: str | None, durable: bool) -> None:
        """Append a completed round's row. The row of a committed checkpoint whose append fails is kept and
        written with the next append: retention may delete the checkpoint first, and its manifest with it."""
        line = history_line(round_index, time.time(), metrics, name)
        if name is not None:
            self._unwritten, line = self._unwritten + line, b""
        self.storage.append(self.storage.join(self.path, HISTORY_NAME), self._unwritten + line, durable=durable)
        self._unwritten, self._history_unsynced = b"", not durable

    def _flush_history(self) -> None:
        """Make every row appended so far durable (with the rows a failed append owes, first)."""
        self.storage.append(self.storage.join(self.path, HISTORY_NAME), self._unwritten, durable=True)
        self._unwritten, self._history_unsynced = b"", False

    # ------------------------------------------------------------------------------------------ retention

    def prune(self, config: CheckpointConfig, dry_run: bool = False) -> Decision:
        """Apply retention under ``config`` now (e.g. a smaller ``num_to_keep`` after the fact).

        The run's own config is not changed. With ``dry_run`` nothing is deleted. Returns the decision.
        """
        with self._mutex:
            self._check_open()
            if dry_run:
                return decide(self.records(), config, self.protected)
            return self._apply_retention(config)

    def _apply_retention(self, config: CheckpointConfig | None = None) -> Decision:
        """Delete what retention decides: the index first, then each manifest, then each directory's files."""
        index = self._state.index
        decision = decide(self.records(), config or self.config, self.protected)
        if not decision.delete:
            return decision
        doomed = {r.name for r in decision.delete}
        index.checkpoints = [c for c in index.checkpoints if c.name not in doomed]
        index.retiring = sorted(set(index.retiring) | doomed)
        self._write_index(self._state)
        for record in decision.delete:
            logger.debug("retention deletes %s: %s", record.name, decision.reasons[record.name])
            self._committed_names.discard(record.name)
            self._delete_checkpoint_files(record.name)
        self.storage.sync_dir(self.path)  # the removals are durable before the index stops listing them
        index.retiring = [n for n in index.retiring if self.storage.exists(self._dir(n))]
        return decision

    def _delete_checkpoint_files(self, name: str) -> None:
        try:
            self.storage.delete_file(self.storage.join(self._dir(name), MANIFEST_NAME))
            self.storage.sync_dir(self._dir(name)) if self.storage.exists(self._dir(name)) else None
            self.storage.delete_tree(self._dir(name))
        except OSError as exc:  # keep purging the others; the name stays in `retiring` and is retried on open
            logger.warning("could not delete checkpoint %s of run %s (%s); will retry", name, self.path, exc)

    def records(self) -> list[Record]:
        """Return the committed checkpoints as retention records, in round order."""
        return [Record(c.name, c.round, c.metrics) for c in self._state.index.checkpoints]

    def retention_decision(self) -> Decision:
        """Return what retention keeps now, with a reason per checkpoint (nothing is deleted)."""
        return decide(self.records(), self.config, self.protected)

    # ------------------------------------------------------------------------------------------ views

    @property
    def next_round(self) -> int:
        """The index of the next report round (metrics-only rounds count)."""
        return self._next_round

    @property
    def checkpoints(self) -> list[tuple[Checkpoint, dict[str, Any]]]:
        """Every committed checkpoint still on storage, in report order, with its round's metrics."""
        return [(self._checkpoint(c.name), c.metrics) for c in self._state.index.checkpoints]

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest committed checkpoint, or None."""
        entries = self._state.index.checkpoints
        return self._checkpoint(entries[-1].name) if entries else None

    @property
    def best_checkpoints(self) -> list[tuple[Checkpoint, dict[str, Any]]]:
        """The top ``num_to_keep`` checkpoints (all when None) as (Checkpoint, metrics), best last."""
        return [(self._checkpoint(r.name), dict(r.metrics)) for r in best_checkpoints(self.records(), self.config)]

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every completed round as ``{"round", "time", "checkpoint", "metrics"}``, in round order.

        Read back from storage (rows buffered since the last commit are flushed first), so a long run's
        history costs no memory in the writer.
        """
        with self._mutex:
            if not self._closed:
                self._flush_history()
            return read_history(self.storage, self.path)

    def resume_checkpoint(self) -> Checkpoint | None:
        """Return the newest committed checkpoint whose files verify; skip corrupt ones with a warning."""
        for entry in reversed(self._state.index.checkpoints):
            problems = verify_checkpoint(self.storage, self.path, entry.name)
            if not problems:
                return self._checkpoint(entry.name)
            logger.warning("checkpoint %s does not verify (%s); falling back to an older one",
                           entry.name, "; ".join(str(p) for p in problems[:3]))
        return None

    def manifest(self, name: str) -> Manifest:
        """Return the manifest of committed checkpoint ``name``."""
        return read_manifest(self.storage, self.path, name)

    def _checkpoint(self, name: str) -> Checkpoint:
        return Checkpoint(self._dir(name), self.storage.fs)

    def _dir(self, name: str) -> str:
        return self.storage.join(self.path, name)

    # ------------------------------------------------------------------------------------------ closing

    def _write_index(self, state: RunState) -> None:
        state.index.updated = time.time()
        state.index.next_round = max(state.index.next_round, getattr(self, "_next_round", 0))
        self.storage.write_atomic(self.storage.join(self.path, RUN_INDEX_NAME), encode(state.index.to_dict()))
        self._retiring_on_disk = set(state.index.retiring)

    def _check_open(self) -> None:
        if self._closed:
            raise TrainkeepError(f"the CheckpointManager of run {self.path} is closed")

    def close(self, status: str = "finished") -> None:
        """Mark the run ``status`` ("finished" or "failed"), make its history durable, release the lock."""
        with self._mutex:
            if self._closed:
                return
            try:
                self._release_protection()
                self._state.index.status = status
                self._write_index(self._state)
                # flushes the rows buffered since the last commit (no-op on a local run without a history)
                self._flush_history()
            finally:
                self._closed = True
                self._lock.release()

    def _release_protection(self) -> None:
        """Drop the protection of checkpoints a worker group ran from, and delete what retention no longer keeps."""
        self.protected = set()
        try:
            self._apply_retention()
        except OSError as exc:  # the run stays consistent: the next open or commit retries the deletes
            logger.warning("retention at close of run %s failed: %s", self.path, exc)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("failed" if exc_type is not None else "finished")

    def __repr__(self) -> str:
        return (f"CheckpointManager(path={self.path!r}, checkpoints={len(self._state.index.checkpoints)}, "
                f"next_round={self._next_round})")


def _new_index(config: CheckpointConfig) -> RunIndex:
    now = time.time()
    return RunIndex(config.to_dict(), created=now, updated=now)

