"""Reading a run without changing it: the run index, manifests and history; choosing the checkpoint to resume.

The manager builds on these to resume a run; ``Result.from_path`` and the CLI use them read-only. Reading one
checkpoint's manifest and verifying its files against it is in :mod:`trainkeep._internal.engine.verify`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.history_rows import (
    CONFIG_CHANGE_KIND,
    config_change_line,
    parse_history,
    parse_history_events,
)
from trainkeep._internal.core.layout import (
    HISTORY_NAME,
    INTERNAL_DIR,
    LOG_PARTS_SUFFIX,
    RUN_INDEX_NAME,
    is_reserved_file,
)
from trainkeep._internal.core.manifest import HistoryMark, IndexEntry, RunIndex, parse_run_index
from trainkeep._internal.core.retention import Decision, decide, decide_corrupt
from trainkeep._internal.core.validation_state import PENDING_VALIDATION, restore_validations
from trainkeep._internal.engine.corruption import apply_marks, mark_corrupt, read_marks, records_of
from trainkeep._internal.engine.history import HistoryScan, scan_history
from trainkeep._internal.engine.verify import corrupt_reason, read_manifest, verify_checkpoint
from trainkeep._internal.storage import Storage
from trainkeep.errors import (
    CheckpointNotFoundError,
    ConfigError,
    ConfigTypeError,
    CorruptRunError,
    IncompatibleRunError,
    RunNotFoundError,
    StorageError,
)

logger = logging.getLogger(__name__)

HISTORY_PARTS_NAME = HISTORY_NAME + LOG_PARTS_SUFFIX  # object stores keep the history in parts (storage/parts.py)


@dataclass
class RunState:
    """What is on storage for one run, reconciled: the index agrees with the manifests after loading.

    ``scan`` is what was read of the history to open the run (see :func:`trainkeep._internal.engine.history.scan_history`);
    ``history`` reads every row on first use, so opening and listing a run never read the whole history.
    ``history_mark`` is set by the opener: the durable, repaired history it leaves (None where kept in parts).
    """

    path: str
    index: RunIndex
    scan: HistoryScan
    problems: list[str] = field(default_factory=list)
    index_rebuilt: bool = False
    storage: Storage | None = field(default=None, repr=False, compare=False)
    history_mark: HistoryMark | None = None
    _history: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def next_round(self) -> int:
        last_ckpt = max((c.round + 1 for c in self.index.checkpoints), default=0)
        return max(self.index.next_round, self.scan.next_round, last_ckpt)

    @property
    def last_report(self) -> dict[str, Any] | None:
        """Return the history row of the newest completed round (from what was read to open the run)."""
        return self.scan.last_row

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every completed round of the history, in round order, read from storage on first use."""
        if self._history is None:
            self._history = read_history(self.storage, self.path) if self.storage is not None else []
        return self._history

    @history.setter
    def history(self, rows: list[dict[str, Any]]) -> None:
        self._history = rows


def is_run(storage: Storage, run_path: str) -> bool:
    """Return True when ``run_path`` holds a trainkeep run (an index, a history or our internal dir)."""
    names = set(storage.listdir(run_path))
    return bool(names & {RUN_INDEX_NAME, HISTORY_NAME, HISTORY_PARTS_NAME, INTERNAL_DIR})


def read_run(storage: Storage, run_path: str, checkpoint_config: CheckpointConfig | None = None) -> RunState:
    """Load a run's state from storage without writing anything.

    Of the history only what follows the index's mark is read (see :func:`trainkeep._internal.engine.history.scan_history`);
    the whole of it is read on first use of the state's ``history``.

    The index is cross-checked against the directories present: a committed checkpoint missing from the index
    (a crash between manifest and index) is added; an index entry whose manifest is gone is dropped with a
    warning; an entry that disagrees with its manifest is rebuilt from it with a warning; an entry whose
    manifest is damaged is marked corrupt. A missing index, or one that is not exactly valid (see
    :func:`~trainkeep._internal.core.manifest.parse_run_index`), is rebuilt from the manifests with a warning. Corrupt
    markers (:mod:`trainkeep._internal.engine.corruption`) are applied last, so a rebuilt index keeps its corrupt marks.

    Raises:
        RunNotFoundError when the path holds no run; IncompatibleRunError for a newer format.
    """
    if not is_run(storage, run_path):
        raise RunNotFoundError(f"no trainkeep run at {run_path} (no {RUN_INDEX_NAME} or {HISTORY_NAME} there)")
    problems: list[str] = []
    index, rebuilt = _read_index(storage, run_path, checkpoint_config, problems)
    _reconcile(storage, run_path, index, problems)
    apply_marks(index, read_marks(storage, run_path))
    scan = scan_history(storage, run_path, None if rebuilt else index.history_mark)
    if rebuilt:  # the manifests know nothing of validations; their history rows do
        raw_history, history_parts = storage.read_log(storage.join(run_path, HISTORY_NAME))
        restore_validations(index, parse_history_events(raw_history, history_parts))
    return RunState(run_path, index, scan, problems, rebuilt, storage)


def read_history(storage: Storage, run_path: str) -> list[dict[str, Any]]:
    """Return every completed round of the run's history, in round order (a torn last line is left out)."""
    raw_history, history_parts = storage.read_log(storage.join(run_path, HISTORY_NAME))
    return parse_history(raw_history, history_parts)[0]


def _read_index(
    storage: Storage, run_path: str, config: CheckpointConfig | None, problems: list[str]
) -> tuple[RunIndex, bool]:
    path = storage.join(run_path, RUN_INDEX_NAME)
    raw = b""
    try:
        raw = storage.read_bytes(path)
        return parse_run_index(raw, path), False
    except FileNotFoundError:
        pass
    except IncompatibleRunError:
        raise
    except CorruptRunError as exc:
        problems.append(f"run index is corrupt ({exc.reason}); rebuilt from the checkpoint manifests")
        logger.warning("run index %s is corrupt (%s); rebuilding it from the manifests", path, exc.reason)
    now = time.time()
    config_dict = config.to_dict() if config is not None else _salvage_config(raw)
    return RunIndex(config_dict, created=now, updated=now), True


def _salvage_config(raw: bytes) -> dict[str, Any]:
    """Return the checkpoint config of a rejected index when it is itself valid, else the default config.

    A reader without a config of its own (the CLI, ``Result.from_path``) should still rank by the run's own
    score after a hand-edit broke some other part of the index.
    """
    try:
        data = json.loads(raw)
        return CheckpointConfig.from_dict(data["checkpoint_config"]).to_dict()
    except (ValueError, RecursionError, TypeError, KeyError, ConfigError, ConfigTypeError):
        return CheckpointConfig().to_dict()


def _reconcile(storage: Storage, run_path: str, index: RunIndex, problems: list[str]) -> bool:
    present = set(storage.listdir(run_path))
    listed = {c.name for c in index.checkpoints}
    changed = False
    kept: list[IndexEntry] = []
    for entry in index.checkpoints:
        checked = _check_entry(storage, run_path, entry, present, problems)
        if checked is not None:
            kept.append(checked)
        changed = changed or checked != entry
    for name in sorted(present - listed - {RUN_INDEX_NAME, HISTORY_NAME, HISTORY_PARTS_NAME, INTERNAL_DIR}):
        if name in index.retiring or is_reserved_file(name) or not storage.isdir(storage.join(run_path, name)):
            continue
        try:
            manifest = read_manifest(storage, run_path, name)
        except FileNotFoundError:
            continue
        except CorruptRunError as exc:
            problems.append(f"checkpoint {name} has a corrupt manifest: {exc.reason}")
            logger.warning("skipping checkpoint %s of run %s: %s", name, run_path, exc.reason)
            continue
        kept.append(IndexEntry.from_manifest(manifest))
        changed = True
    kept.sort(key=lambda e: e.round)
    index.checkpoints = kept
    return changed


def _check_entry(
    storage: Storage, run_path: str, entry: IndexEntry, present: set[str], problems: list[str]
) -> IndexEntry | None:
    """Return ``entry`` as its manifest says it is (None when the manifest is gone; marked when it is damaged)."""
    try:
        if entry.name not in present:
            raise CheckpointNotFoundError(entry.name)
        manifest = read_manifest(storage, run_path, entry.name)
    except FileNotFoundError:
        problems.append(f"checkpoint {entry.name} is listed in the run index but its manifest is missing")
        logger.warning("checkpoint %s of run %s is in the index but has no manifest; dropping it from the "
                       "index (its files, if any, are left alone)", entry.name, run_path)
        return None
    except CorruptRunError as exc:
        reason = f"manifest: {exc.reason}"
        problems.append(f"checkpoint {entry.name} has a damaged manifest ({reason})")
        return entry if entry.corrupt is not None else dataclasses.replace(entry, corrupt=reason)
    except (IncompatibleRunError, OSError) as exc:  # newer, or unreadable now: keep it as it is, verify reports it
        problems.append(f"checkpoint {entry.name}: its manifest cannot be read ({exc})")
        logger.warning("cannot read the manifest of checkpoint %s of run %s (%s)", entry.name, run_path, exc)
        return entry
    if entry.agrees_with(manifest):
        return entry
    problems.append(f"checkpoint {entry.name}: its run index entry disagrees with its manifest; rebuilt")
    logger.warning("the run index entry of checkpoint %s of run %s disagrees with its manifest; rebuilding the "
                   "entry from the manifest", entry.name, run_path)
    return IndexEntry.from_manifest(manifest, entry.corrupt, entry.validation)



def choose_resume(storage: Storage, run_path: str, index: RunIndex) -> tuple[str | None, bool]:
    """Return the newest checkpoint of ``index`` whose files verify, and whether a corrupt mark was added.

    Checkpoints already marked corrupt are skipped without re-reading them; one that fails verification is
    skipped with a warning, and marked corrupt when it is damaged (not merely unreadable). The caller writes the
    index when a mark was added.

    Raises:
        StorageError when no checkpoint verifies and at least one could not be read: resuming from nothing
        after a passing storage fault would restart the run from scratch.
    """
    marked, unreadable = False, None
    for entry in reversed(list(index.checkpoints)):
        if entry.corrupt is not None:
            logger.warning("checkpoint %s is marked corrupt (%s); falling back to an older one", entry.name,
                           entry.corrupt)
            continue
        problems = verify_checkpoint(storage, run_path, entry.name)
        if not problems:
            return entry.name, marked
        logger.warning("checkpoint %s does not verify (%s); falling back to an older one",
                       entry.name, "; ".join(str(p) for p in problems[:3]))
        reason = corrupt_reason(problems)
        if reason is None:
            unreadable = unreadable or problems[0]
            continue
        try:
            marked = mark_corrupt(storage, run_path, index, entry.name, reason) or marked
        except OSError as exc:  # the in-memory mark still protects it in this process
            logger.warning("could not write the corrupt marker of checkpoint %s (%s)", entry.name, exc)
            marked = True
    if unreadable is not None:
        raise StorageError("resume", storage.join(run_path, unreadable.checkpoint, unreadable.path),
                           OSError(errno.EIO, f"no checkpoint verifies, and this one {unreadable.reason}"))
    return None, marked


def decide_retention(
    storage: Storage, run_path: str, index: RunIndex, config: CheckpointConfig, protected: Collection[str] = (),
    *, corrupt_only: bool = False,
) -> Decision:
    """Decide what retention deletes now, honouring corrupt marks, even one written since the run was loaded.

    Before a checkpoint is doomed its marker is looked up (one read per doomed checkpoint, not per round), so a
    checkpoint that ``trainkeep verify`` condemned while this writer held the run is kept. With
    ``corrupt_only`` the decision deletes exactly the checkpoints marked corrupt (``prune --corrupt``).
    """
    if corrupt_only:
        return decide_corrupt(records_of(index))
    # a checkpoint whose validation is pending is kept, like one a live worker started from
    protected = {*protected, *(c.name for c in index.checkpoints
                               if c.validation is not None and c.validation.get("status") == PENDING_VALIDATION)}
    decision = decide(records_of(index), config, protected)
    if decision.delete and apply_marks(index, read_marks(storage, run_path, [r.name for r in decision.delete])):
        decision = decide(records_of(index), config, protected)
    return decision


def note_config_change(storage: Storage, run_path: str, state: RunState, config: CheckpointConfig) -> int:
    """Adopt ``config`` as the run's CheckpointConfig; when it differs from the stored one, warn and record it.

    Returns the number of bytes appended to the history (0 when nothing was recorded).

    The warning names the old and the new settings and what retention under the new ones will delete; it is
    logged before anything is deleted. The change is appended to the history as a row of kind
    ``"config_change"`` (durably), which the round readers leave out. An index rebuilt from the manifests has no
    stored config to compare with, so nothing is recorded then.

    Raises:
        StorageError when the history row cannot be appended.
    """
    new = config.to_dict()
    old = state.index.checkpoint_config
    if not state.index_rebuilt and _normalised(old) != new:
        doomed = [r.name for r in decide(records_of(state.index), config).delete]
        logger.warning("run %s was written with CheckpointConfig(%s) and is reopened with CheckpointConfig(%s); "
                       "retention now follows the new settings and will delete %s", run_path, _settings(old),
                       _settings(new), ", ".join(doomed) if doomed else "nothing now")
        line = config_change_line(state.next_round, time.time(), old, new)
        storage.append(storage.join(run_path, HISTORY_NAME), line, durable=True)
        state.index.checkpoint_config = new
        return len(line)
    state.index.checkpoint_config = new
    return 0


def read_config_changes(storage: Storage, run_path: str) -> list[dict[str, Any]]:
    """Return the run's recorded CheckpointConfig changes (history rows of kind "config_change"), oldest first."""
    raw_history, history_parts = storage.read_log(storage.join(run_path, HISTORY_NAME))
    return [e for e in parse_history_events(raw_history, history_parts) if e.get("kind") == CONFIG_CHANGE_KIND]


def _normalised(stored: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return CheckpointConfig.from_dict(stored).to_dict()
    except (ConfigError, ConfigTypeError, TypeError):
        return None


def _settings(config: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in config.items())
