"""The staged commit: one checkpoint directory, from its intent record to its manifest (the commit point).

A checkpoint is staged (intent record written, directory created), filled with its files by whoever holds the
files (the manager's own copy, a trainer's workers), then committed or aborted, exactly once:

1. stage: write the intent record, create the directory       -> debris that the next open sweeps
2. the files are written into ``path`` and fsynced               -> debris that the next open sweeps
3. publish: fsync the directories, flush the earlier history
   rows, write the manifest atomically (the commit point)       -> the checkpoint exists
4. the owner lists it in the index and appends its history row  -> the next open repairs both from the manifest
5. finish: drop the intent record                                -> the next open drops it

A failure before the manifest aborts the round: the directory and the intent record are removed, nothing new is
visible. :class:`StagedCheckpoint` is the only code that writes a manifest; the CheckpointManager that staged it
(its owner) orders the steps with the index, the history and retention, under the run's lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from typing import Any, Protocol

from trainkeep._internal.core.layout import INTERNAL_DIR, MANIFEST_NAME, intent_name
from trainkeep._internal.core.manifest import FileEntry, Manifest, encode
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.storage import Storage
from trainkeep._internal.storage.base import TransferStats
from trainkeep._internal.storage.syscalls import together
from trainkeep.errors import CheckpointExistsError, TrainkeepError

logger = logging.getLogger(__name__)

STAGED, COMMITTED, ABORTED = "staged", "committed", "aborted"


def check_name_free(storage: Storage, run_path: str, name: str, committed: Container[str],
                    staging: Container[str], existing_ok: bool = False) -> None:
    """Refuse a checkpoint name that is ``committed``, in ``staging``, or (unless ``existing_ok``) a path in the run.

    The one place that decides whether a (valid) checkpoint name may be staged in the run at ``run_path``.

    Raises:
        CheckpointExistsError naming the name, the run and what to do instead.
    """
    if name in committed:
        raise CheckpointExistsError(
            f"checkpoint_dir_name {name!r} is already a committed checkpoint of run {run_path}; "
            "checkpoints are never overwritten. Pick a unique name per report (e.g. include the epoch)."
        )
    if name in staging:
        raise CheckpointExistsError(
            f"checkpoint_dir_name {name!r} is being staged by an unfinished report of run {run_path}; "
            "two reports never share a directory. Pick a unique name per report (e.g. include the epoch)."
        )
    path = storage.join(run_path, name)
    if not existing_ok and storage.exists(path):
        raise CheckpointExistsError(
            f"{path} already exists and is not a checkpoint of this run; trainkeep will not "
            "write into it. Move it away or pick another checkpoint_dir_name."
        )


class CommitOwner(Protocol):
    """What a staged checkpoint asks of the manager that staged it."""

    def _commit_staged(self, staged: StagedCheckpoint, metrics: dict[str, Any], entries: list[FileEntry],
                       transfer: TransferStats | None) -> Checkpoint: ...

    def _abort_staged(self, staged: StagedCheckpoint) -> None: ...


class StagedCheckpoint:
    """A staged checkpoint directory of a run: write its files into :attr:`path`, then commit or abort it.

    Obtain one from :meth:`CheckpointManager.stage`. ``state`` is "staged", then "committed" or "aborted".
    """

    def __init__(self, owner: CommitOwner, storage: Storage, run_path: str, name: str) -> None:
        self.name = name
        self.path = storage.join(run_path, name)
        self.state = STAGED
        self._owner, self._storage, self._run_path = owner, storage, run_path
        self._intent = storage.join(run_path, INTERNAL_DIR, intent_name(name))

    def commit(self, metrics: dict[str, Any], entries: list[FileEntry],
               transfer: TransferStats | None = None) -> Checkpoint:
        """Commit the checkpoint whose ``entries`` (every file, with size and checksum) are written and fsynced.

        ``metrics`` must be normalised already (``CheckpointManager.validate_report``). Returns the committed
        Checkpoint; retention has run. If the process dies inside, the checkpoint is committed whole or
        invisible, and every checkpoint committed before is intact.

        Raises:
            TrainkeepError when the checkpoint was committed or aborted already, or its manager is closed;
            StorageError when storage fails: before the manifest the round is aborted (nothing new visible),
            after it the checkpoint stays committed.
        """
        return self._owner._commit_staged(self, metrics, entries, transfer)

    def abort(self) -> None:
        """Remove the staged directory and its intent record (a failed or discarded round).

        Does nothing once the checkpoint is committed or aborted. A failed removal is logged, not raised: the
        next open sweeps the debris.
        """
        self._owner._abort_staged(self)

    # ----------------------------------------------------------- the steps, called by the owner under its lock

    def check_staged(self, action: str) -> None:
        """Raise TrainkeepError unless the checkpoint is still staged (naming ``action`` and the state)."""
        if self.state != STAGED:
            raise TrainkeepError(f"cannot {action} checkpoint {self.name!r} at {self.path}: it was {self.state} "
                                 "already; a staged checkpoint is committed or aborted exactly once")

    def begin(self) -> None:
        """Write the intent record, then create the directory (step 1).

        Only the record's name counts (the sweep on open reads names, never contents), so on a local disk it is
        created in place and only its directory entry is made durable: one fsync, not a temp file's two. The
        entry is durable before the checkpoint directory's (fsynced in ``publish``), so no directory of ours can
        survive a power cut without its record.
        """
        record = b'{"checkpoint": "%s"}\n' % self.name.encode()
        storage = self._storage
        if storage.is_local:
            storage.append(self._intent, record)
            storage.sync_dir(storage.join(self._run_path, INTERNAL_DIR))
        else:
            storage.write_atomic(self._intent, record)
        storage.makedirs(self.path)

    def publish(self, round_index: int, metrics: dict[str, Any], files: list[FileEntry],
                flush_history: Callable[[], None]) -> Manifest:
        """Make the files and the earlier history rows durable, then write the manifest (step 3).

        On any failure the round is aborted (its directory and intent record removed) and the error raised.
        """
        storage = self._storage
        try:
            # the files' names, the directory's name and the earlier rounds' history rows (which must not be
            # lost while this later one commits) become durable before the manifest; the first two waits for
            # the disk overlap. The history waits for the run directory: its first rows may have created it.
            def run_dir_then_history() -> None:
                storage.sync_dir(self._run_path)
                flush_history()

            together(run_dir_then_history, lambda: storage.sync_dir(self.path))
            manifest = Manifest(self.name, round_index, time.time(), metrics,
                                tuple(sorted(files, key=lambda f: f.path)))
            storage.write_atomic(storage.join(self.path, MANIFEST_NAME), encode(manifest.to_dict()))
        except BaseException:
            self.remove()  # the round fails whole: nothing new becomes visible
            raise
        self.state = COMMITTED
        return manifest

    def finish(self) -> None:
        """Drop the intent record of the committed checkpoint (step 5)."""
        self._storage.delete_file(self._intent)

    def remove(self) -> None:
        """Mark the checkpoint aborted; delete its directory, then its intent record (logged on failure)."""
        self.state = ABORTED
        try:
            self._storage.delete_tree(self.path)
            self._storage.delete_file(self._intent)
        except OSError as exc:
            logger.warning("could not remove the debris of %s (%s); the next open sweeps it", self.name, exc)

    def __repr__(self) -> str:
        return f"StagedCheckpoint(name={self.name!r}, path={self.path!r}, state={self.state!r})"
