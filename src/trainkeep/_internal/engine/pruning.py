"""Retention carried out: the CheckpointManager deletes what :mod:`trainkeep._internal.core.retention` drops.

:class:`RunPruning` deletes only after the commit and the index update before it are durable, in the order of
DESIGN §5: the run index stops listing the checkpoint and names it ``retiring``, then its manifest goes, then its
files; a crash anywhere in between leaves orphans that the next open finishes deleting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.retention import Decision
from trainkeep._internal.engine.opening import delete_checkpoint
from trainkeep._internal.engine.run import RunState, decide_retention
from trainkeep._internal.engine.views import RunViews

logger = logging.getLogger(__name__)


class RunPruning(RunViews):
    """Retention's deletes, mixed into CheckpointManager (which sets every attribute below)."""

    _mutex: threading.RLock
    _committed_names: set[str]
    _check_open: Callable[[], None]
    _write_index: Callable[[RunState], None]
    _removals_unsynced: bool = False  # retention deleted checkpoints whose removal no fsync has made durable yet

    def prune(self, config: CheckpointConfig, dry_run: bool = False, *, corrupt: bool = False) -> Decision:
        """Apply retention under ``config`` now (e.g. a smaller ``num_to_keep`` after the fact).

        The run's own config is not changed. With ``dry_run`` nothing is deleted. With ``corrupt`` exactly the
        checkpoints marked corrupt are deleted (nothing else ever deletes them). Returns the decision.
        """
        with self._mutex:
            self._check_open()
            if dry_run:
                return decide_retention(self.storage, self.path, self._state.index, config, self.protected,
                                        corrupt_only=corrupt)
            return self._apply_retention(config, corrupt_only=corrupt)

    def _apply_retention(self, config: CheckpointConfig | None = None, *, corrupt_only: bool = False) -> Decision:
        """Delete what retention decides: the index first, then each manifest, then each directory's files."""
        decision = self._plan_retention(config, corrupt_only=corrupt_only)
        if decision.delete:
            self._write_index(self._state)
            self._delete_retired(decision)
        return decision

    def _plan_retention(self, config: CheckpointConfig | None = None, *, corrupt_only: bool = False) -> Decision:
        """Decide what retention deletes and take it out of the in-memory index (listed as retiring); no write.

        The index write that follows (the caller's: a commit's own, or :meth:`_apply_retention`'s) must be
        durable before :meth:`_delete_retired` deletes anything.
        """
        index = self._state.index
        decision = decide_retention(self.storage, self.path, index, config or self.config, self.protected,
                                    corrupt_only=corrupt_only)
        if decision.delete:
            doomed = {r.name for r in decision.delete}
            index.checkpoints = [c for c in index.checkpoints if c.name not in doomed]
            index.retiring = sorted(set(index.retiring) | doomed)
        return decision

    def _delete_retired(self, decision: Decision, sync: bool = True) -> None:
        """Delete what ``decision`` dooms (already out of the index on storage): manifests, then files.

        The names stay listed as retiring until the removals are durable (an fsync of the run directory):
        with ``sync`` that fsync is made here; without it (a commit) the next commit's fsync of the run
        directory before its manifest makes them durable, and :meth:`_retired_durable` is called after it.
        """
        if not decision.delete:
            return
        for record in decision.delete:
            logger.debug("retention deletes %s: %s", record.name, decision.reasons[record.name])
            self._committed_names.discard(record.name)
            delete_checkpoint(self.storage, self.path, record.name)
        self._removals_unsynced = True
        if sync:
            self.storage.sync_dir(self.path)  # the removals are durable before the index stops listing them
            self._retired_durable()

    def _retired_durable(self) -> None:
        """Stop listing as retiring what is gone, now that an fsync of the run directory made its removal durable.

        Call only right after such an fsync, which came after every delete so far; the next index write then
        drops the names.
        """
        if self._removals_unsynced:
            self._removals_unsynced = False
            index = self._state.index
            index.retiring = [n for n in index.retiring if self.storage.exists(self._dir(n))]

    def _settle_retiring(self) -> None:
        """Make the removals of retired checkpoints durable now, if a commit left them to the next one."""
        if self._removals_unsynced:
            self.storage.sync_dir(self.path)
            self._retired_durable()
