"""The validation state of committed checkpoints, as the CheckpointManager records it.

A checkpoint reported with ``validation=True`` is validated in a process of its own (see
:mod:`trainkeep._internal.trainer.validation`); its state (see ``IndexEntry.validation``) lives in the run index
and, durably, as a history row of kind "validation".
"""

from __future__ import annotations

import time
from typing import Any

from trainkeep._internal.core.validation_state import validation_line
from trainkeep._internal.engine.history import HistoryWriter
from trainkeep._internal.engine.pruning import RunPruning


class RunValidations(RunPruning):
    """Read and update the validation states of a run, mixed into CheckpointManager (which sets every attribute)."""

    _history: HistoryWriter

    def validations(self) -> dict[str, dict[str, Any]]:
        """Return the validation state of every committed checkpoint that has one (see ``IndexEntry.validation``)."""
        with self._mutex:
            return {c.name: dict(c.validation) for c in self._state.index.checkpoints if c.validation is not None}

    def update_validation(self, name: str, validation: dict[str, Any]) -> bool:
        """Put committed checkpoint ``name`` in the validation state ``validation``, then apply retention.

        The state is first appended to the history as a row of kind "validation" (durably: it restores the state
        if the index is ever rebuilt from the manifests), then the run index is replaced; a VALIDATED state merges
        the validation's metrics into the checkpoint's, so retention ranks it by them. Returns False, writing
        nothing, when ``name`` is no longer committed. If the process dies inside, the index says the old state or
        the new one.

        Raises:
            InvalidMetricsError for metrics that cannot be merged (nothing written); StorageError.
        """
        with self._mutex:
            self._check_open()
            entries = self._state.index.checkpoints
            i = next((i for i, c in enumerate(entries) if c.name == name), None)
            if i is None:
                return False
            entry = entries[i].with_validation(validation)
            # after the round's own row (owed rows go first), counted by the writer's history mark
            self._history.append_event(validation_line(entry.round, time.time(), name, entry.metrics, validation))
            entries[i] = entry
            self._write_index(self._state)
            self._apply_retention()
            return True
