"""``get_all_reported_checkpoints()``: the run's checkpoints as a worker sees them, as in Ray Train 2.60.

The worker asks the driver (``protocol.ListReported``); the controller answers once every report this worker
made is finished (committed, or recorded) and, in ``VALIDATED`` mode, no validation is pending, or once
``timeout_s`` passed (with what there is then). The list is in Ray's order: the run's ranking, worst first and
best last (by report order when there is no score attribute); corrupt checkpoints are left out.

Validation plugs in through the run index: an entry's ``validation`` (``{"status": ...}``, when the checkpoint
asked for one) gives its status, and any entry whose status is PENDING_VALIDATION keeps VALIDATED-mode
queries waiting. A checkpoint without validation is COMMITTED, as in Ray. Whoever finishes a validation in the
driver calls ``Controller.answer_listings()`` so that waiting queries are answered at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainkeep._internal.core.retention import rank
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep.errors import ConfigError

if TYPE_CHECKING:
    from trainkeep._internal.engine.manager import CheckpointManager


class CheckpointConsistencyMode(str, enum.Enum):
    """What ``get_all_reported_checkpoints()`` waits for (Ray Train's names)."""

    COMMITTED = "COMMITTED"
    """Every report this worker made is committed."""
    VALIDATED = "VALIDATED"
    """That, and no checkpoint's validation is still pending."""


class ReportedCheckpointStatus(str, enum.Enum):
    """Where a reported checkpoint stands (Ray Train's names)."""

    COMMITTED = "COMMITTED"
    """Committed; no validation was asked for."""
    PENDING_VALIDATION = "PENDING_VALIDATION"
    VALIDATED = "VALIDATED"
    VALIDATION_TIMEOUT = "VALIDATION_TIMEOUT"
    VALIDATION_FAILED = "VALIDATION_FAILED"


@dataclass
class ReportedCheckpoint:
    """One checkpoint of the run: the committed directory, its metrics, its status."""

    checkpoint: Checkpoint
    metrics: dict[str, Any]
    status: ReportedCheckpointStatus


@dataclass
class Waiter:
    """A worker's pending query: ``reports`` is how many rounds of this attempt it reported before asking."""

    rank: int
    reports: int
    mode: CheckpointConsistencyMode
    deadline: float | None


def consistency_mode(value: Any) -> CheckpointConsistencyMode:
    """Return ``value`` as a CheckpointConsistencyMode.

    Raises:
        ConfigError (a ValueError) naming the value and the modes.
    """
    try:
        return CheckpointConsistencyMode(value)
    except ValueError:
        allowed = ", ".join(m.name for m in CheckpointConsistencyMode)
        raise ConfigError(f"consistency_mode must be a CheckpointConsistencyMode ({allowed}), got {value!r}") from None


def check_timeout(timeout_s: Any) -> float | None:
    """Return ``timeout_s`` when it is None or a number > 0.

    Raises:
        ConfigError (a ValueError) otherwise.
    """
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ConfigError(f"timeout_s must be None or a number > 0, got {timeout_s!r}")
    return float(timeout_s)


def status_of(entry: Any) -> ReportedCheckpointStatus:
    """Return the status of a run index entry: its validation's, or COMMITTED without one."""
    validation = getattr(entry, "validation", None)
    if isinstance(validation, dict) and validation.get("status") in ReportedCheckpointStatus.__members__:
        return ReportedCheckpointStatus(validation["status"])
    return ReportedCheckpointStatus.COMMITTED


def validation_pending(manager: CheckpointManager) -> bool:
    """Return True while a committed checkpoint of the run waits for its validation."""
    return any(status_of(e) is ReportedCheckpointStatus.PENDING_VALIDATION
               for e in manager._state.index.checkpoints)


def is_answerable(waiter: Waiter, rounds_finished: int, manager: CheckpointManager, now: float) -> bool:
    """Return True when ``waiter`` may be answered: its rounds are finished (and validations, when asked), or
    its deadline passed."""
    if waiter.deadline is not None and now >= waiter.deadline:
        return True
    if rounds_finished < waiter.reports:
        return False
    return waiter.mode is CheckpointConsistencyMode.COMMITTED or not validation_pending(manager)


def listing(manager: CheckpointManager) -> list[tuple[str, dict[str, Any], str]]:
    """Return (path, metrics, status) of the run's committed checkpoints in Ray's order: worst first, best last."""
    entries = {e.name: e for e in manager._state.index.checkpoints}
    return [(manager.storage.join(manager.path, r.name), dict(r.metrics), status_of(entries.get(r.name)).value)
            for r in rank(manager.records(), manager.config)]


def to_reported(items: list[tuple[str, dict[str, Any], str]], filesystem: Any) -> list[ReportedCheckpoint]:
    """Build the worker's answer from the driver's ``listing``."""
    return [ReportedCheckpoint(Checkpoint(path, filesystem), metrics, ReportedCheckpointStatus(status))
            for path, metrics, status in items]
