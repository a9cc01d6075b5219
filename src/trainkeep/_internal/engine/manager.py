"""CheckpointManager: the engine. It commits checkpoints, records history, applies retention, and resumes.

The manager orders the work; each protocol lives in one module: opening a run in
:mod:`trainkeep._internal.engine.opening`, the staged commit in :mod:`trainkeep._internal.engine.commit`, the history
rows in :mod:`trainkeep._internal.engine.history`, what retention keeps in :mod:`trainkeep._internal.core.retention`
and its deletes in :mod:`trainkeep._internal.engine.pruning`, the validation states in
:mod:`trainkeep._internal.engine.validations`, the read-only views in :mod:`trainkeep._internal.engine.views`.
Order of a checkpoint round (DESIGN §5), and what a crash at each point leaves:

1. validate metrics, score and name                 -> nothing written
2. stage: write the intent record, create the dir    -> debris that the next open sweeps
3. copy the files, fsync them and the directories    -> debris that the next open sweeps
4. write the manifest atomically (the commit point)  -> the checkpoint exists
5. append the history row, replace the run index     -> the next open repairs both from the manifest
6. drop the intent record                            -> the next open drops it
7. retention: index first, then manifests, then files -> orphans the next open finishes deleting
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import (
    INTERNAL_DIR,
    LOCK_NAME,
    RUN_INDEX_NAME,
    default_checkpoint_name,
    validate_checkpoint_name,
)
from trainkeep._internal.core.manifest import FileEntry, IndexEntry, Manifest, encode
from trainkeep._internal.core.metrics import check_score, normalize_metrics
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.commit import STAGED, StagedCheckpoint, check_name_free
from trainkeep._internal.engine.history import HistoryWriter
from trainkeep._internal.engine.opening import open_run, prepare_run_dir
from trainkeep._internal.engine.run import RunState, choose_resume, read_history
from trainkeep._internal.engine.validations import RunValidations
from trainkeep._internal.storage import Storage, list_source_files, resolve
from trainkeep._internal.storage.base import TransferStats, format_bytes
from trainkeep._internal.storage.syscalls import together
from trainkeep.errors import ConfigTypeError, TrainkeepError

logger = logging.getLogger(__name__)


class CheckpointManager(RunValidations):
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
        self._staging: dict[str, StagedCheckpoint] = {}  # staged, neither committed nor aborted yet
        self._history = HistoryWriter(self.storage, self.path)
        prepare_run_dir(self.storage, self.path)
        self._lock = self.storage.lock(self.storage.join(self.path, INTERNAL_DIR, LOCK_NAME))
        try:
            self._state = open_run(self.storage, self.path, self.config)
            self._history.resume(self._state.history_mark)
            self._write_index(self._state)
        except BaseException:
            self._lock.release()
            raise
        if self._state.index.checkpoints:
            logger.info("resuming run %s: %d committed checkpoints, next report index %d",
                        self.path, len(self._state.index.checkpoints), self._state.next_round)
        self._next_round = self._state.next_round
        self._state.history = []  # read back from storage on demand (see `history`): constant memory per round
        self._committed_names = {c.name for c in self._state.index.checkpoints}

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
            # 1. validate metrics, score and name: nothing is written before this passes
            clean, name = self.validate_report(metrics, checkpoint, checkpoint_dir_name)
            if checkpoint is None:
                self.record(clean)
                return None
            assert name is not None
            with checkpoint.as_directory() as src:
                files = list_source_files(src)
                # 2. stage: intent record, then the directory
                staged = self._stage_checked(name)
                # 3. copy the files (fsynced by put_tree); a failure removes what was staged
                try:
                    put = self.storage.put_tree(src, staged.path, files)
                except BaseException:
                    staged.abort()
                    raise
            # 4.-7. the commit point, the index and history, retention
            return staged.commit(clean, put.entries, put.stats)

    def validate_report(
        self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None, checkpoint_dir_name: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """Check a report before anything is written; return the normalised metrics and the checkpoint name.

        Raises:
            InvalidMetricsError / ScoreTypeError for bad metrics, ConfigTypeError for a checkpoint that is not a
            Checkpoint, InvalidCheckpointNameError / CheckpointExistsError for a bad or taken name.
        """
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
        check_name_free(self.storage, self.path, name, self._committed_names, self._staging)
        return clean, name

    def record(self, metrics: dict[str, Any]) -> None:
        """Record a metrics-only round (already validated). Not fsynced: durable with the next commit."""
        with self._mutex:
            self._check_open()
            self._history.append(self._next_round, metrics, None, durable=False)
            self._next_round += 1
            if self._history.mark_due:  # bound what a reopen after a crash reads (see trainkeep._internal.engine.history)
                self._history.flush()
                self._write_index(self._state)

    # ------------------------------------------------------------------------------------------ the staged commit

    def stage(self, name: str, *, existing_ok: bool = False) -> StagedCheckpoint:
        """Stage checkpoint ``name``: write its intent record and create its directory; return the handle.

        Write the files into the handle's ``path``, then call its ``commit`` (or ``abort``). ``existing_ok``
        lets files already written in place (a trainer's NO_UPLOAD ranks) be committed from the directory.
        If the process dies before the commit, the next open sweeps the directory.

        Raises:
            InvalidCheckpointNameError for a bad name; CheckpointExistsError when the name is committed, being
            staged, or (unless ``existing_ok``) already exists; StorageError when storage fails.
        """
        with self._mutex:
            self._check_open()
            validate_checkpoint_name(name)
            check_name_free(self.storage, self.path, name, self._committed_names, self._staging, existing_ok)
            return self._stage_checked(name)

    def _stage_checked(self, name: str) -> StagedCheckpoint:
        if name in self._retiring_on_disk:
            # The name of a checkpoint that retention deleted is reused: the index on storage must stop
            # listing it as retiring before the new one commits, or the next open would delete the new one.
            self._settle_retiring()
            self._write_index(self._state)
        staged = StagedCheckpoint(self, self.storage, self.path, name)
        staged.begin()
        self._staging[name] = staged
        return staged

    def abort(self, name: str) -> None:
        """Abort the staged, uncommitted checkpoint ``name`` (see :meth:`StagedCheckpoint.abort`)."""
        with self._mutex:
            staged = self._staging.get(name)
            if staged is not None:
                staged.abort()

    def commit(self, name: str, metrics: dict[str, Any], files: list[FileEntry],
               transfer: TransferStats | None = None) -> Checkpoint:
        """Commit the staged checkpoint ``name`` (see :meth:`StagedCheckpoint.commit`).

        Raises:
            TrainkeepError when ``name`` is not staged; what StagedCheckpoint.commit raises.
        """
        with self._mutex:
            staged = self._staging.get(name)
            if staged is None:
                raise TrainkeepError(f"checkpoint {name!r} of run {self.path} is not staged; stage(name) first")
            return staged.commit(metrics, files, transfer)

    def _commit_staged(self, staged: StagedCheckpoint, metrics: dict[str, Any], files: list[FileEntry],
                       transfer: TransferStats | None) -> Checkpoint:
        """Commit ``staged``: the manifest, then the index and history, the intent record, retention."""
        with self._mutex:
            self._check_open()
            staged.check_staged("commit")
            name, round_index = staged.name, self._next_round
            # 1. the commit point: the files and earlier history rows durable, then the manifest
            try:
                manifest = staged.publish(round_index, metrics, files, self._history.flush_owed)
            finally:
                del self._staging[name]
            self._retired_durable()  # publish fsynced the run directory: the earlier removals are durable
            # 2. the index lists it, without what retention deletes (listed as retiring: one index write does
            #    both), and the history has its row (the next open repairs both if we die here)
            self._committed_names.add(name)
            self._next_round += 1
            self._state.index.checkpoints.append(IndexEntry.from_manifest(manifest))
            retention = self._plan_retention()
            together(lambda: self._history.append(round_index, metrics, name, durable=True),  # fsyncs overlap
                     lambda: self._write_index(self._state))
            # 3. the intent record goes, then 4. retention deletes (the index no longer lists them)
            staged.finish()
            self._delete_retired(retention, sync=False)  # made durable by the next commit's run-dir fsync
            self._log_commit(staged, manifest, transfer)
            return Checkpoint(staged.path, self.storage.fs)

    def _abort_staged(self, staged: StagedCheckpoint) -> None:
        with self._mutex:
            if staged.state == STAGED:
                del self._staging[staged.name]
                staged.remove()

    def _log_commit(self, staged: StagedCheckpoint, manifest: Manifest, transfer: TransferStats | None) -> None:
        logger.log(logging.DEBUG if transfer and transfer.showed_progress else logging.INFO,
                   "committed checkpoint %s of run %s: %s", staged.name, self.path,
                   transfer.describe() if transfer else format_bytes(manifest.size))

    # ------------------------------------------------------------------------------------------ views

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every completed round as ``{"round", "time", "checkpoint", "metrics"}``, in round order.

        Read back from storage (rows buffered since the last commit are flushed first), so a long run's
        history costs no memory in the writer.
        """
        with self._mutex:
            if not self._closed:
                self._history.flush()
            return read_history(self.storage, self.path)

    def resume_checkpoint(self) -> Checkpoint | None:
        """Return the newest committed checkpoint whose files verify; skip corrupt ones with a warning and mark
        them corrupt in the run index (see ``trainkeep._internal.engine.run.choose_resume``, which also says what it raises)."""
        with self._mutex:
            name, marked = choose_resume(self.storage, self.path, self._state.index)
            if marked and not self._closed:
                self._write_index(self._state)
            return self._checkpoint(name) if name is not None else None

    # ------------------------------------------------------------------------------------------ closing

    def _write_index(self, state: RunState) -> None:
        state.index.updated = time.time()
        state.index.next_round = max(state.index.next_round, getattr(self, "_next_round", 0))
        state.index.history_mark = self._history.mark  # opening reads only the history after it
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
                try:  # the rows buffered since the last commit, first, so that the index's mark covers them
                    self._history.flush()
                finally:
                    self._write_index(self._state)
            finally:
                self._closed = True
                self._lock.release()

    def retain(self) -> None:
        """Apply retention now, e.g. once a restarted worker group's protection replaced the failed one's (whose
        workers are gone); a failed delete is logged, and the next commit or open retries it."""
        with self._mutex:
            try:
                self._apply_retention()
            except OSError as exc:
                logger.warning("retention of run %s failed: %s", self.path, exc)

    def _release_protection(self) -> None:
        """Drop the protection of checkpoints a worker group ran from, and delete what retention no longer keeps."""
        self.protected = set()
        try:
            self._apply_retention()
            self._settle_retiring()  # the last commit's removals, so the closed run's index lists them no more
        except OSError as exc:  # the run stays consistent: the next open or commit retries the deletes
            logger.warning("retention at close of run %s failed: %s", self.path, exc)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("failed" if exc_type is not None else "finished")

    def __repr__(self) -> str:
        return (f"CheckpointManager(path={self.path!r}, checkpoints={len(self._state.index.checkpoints)}, "
                f"next_round={self._next_round})")

