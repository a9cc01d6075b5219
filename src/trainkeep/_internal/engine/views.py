"""The read side of an open run: its committed checkpoints, the best of them, their manifests.

:class:`RunViews` answers from the state the CheckpointManager keeps in memory (the run index) and writes
nothing; the manager, which derives from it, is the only writer.
"""

from __future__ import annotations

from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.manifest import Manifest
from trainkeep._internal.core.retention import Decision, Record, best_checkpoints
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.corruption import records_of
from trainkeep._internal.engine.run import RunState, decide_retention
from trainkeep._internal.engine.verify import read_manifest
from trainkeep._internal.storage import Storage


class RunViews:
    """Read-only views of an open run, mixed into CheckpointManager (which sets every attribute below)."""

    storage: Storage
    path: str
    config: CheckpointConfig
    protected: set[str]
    _state: RunState
    _next_round: int

    def records(self) -> list[Record]:
        """Return the committed checkpoints as retention records, in round order."""
        return records_of(self._state.index)

    def retention_decision(self) -> Decision:
        """Return what retention keeps now, with a reason per checkpoint (nothing is deleted)."""
        return decide_retention(self.storage, self.path, self._state.index, self.config, self.protected)

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

    def manifest(self, name: str) -> Manifest:
        """Return the manifest of committed checkpoint ``name``."""
        return read_manifest(self.storage, self.path, name)

    def _checkpoint(self, name: str) -> Checkpoint:
        return Checkpoint(self._dir(name), self.storage.fs)

    def _dir(self, name: str) -> str:
        return self.storage.join(self.path, name)

