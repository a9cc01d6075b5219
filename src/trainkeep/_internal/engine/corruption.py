"""Corrupt marks: a checkpoint that failed verification is recorded as corrupt, so that nothing deletes it.

DESIGN §5, invariant 5: a corrupt checkpoint is skipped on resume, left out of ranking and of deletion by
retention, and removed only by an explicit command (``trainkeep prune RUN --corrupt``).

The mark lives in two places:

* the run index entry's ``corrupt`` field (the reason), which everything that ranks or deletes reads; and
* a small marker file ``.trainkeep/corrupt-<name>.json`` in the run, written first. The index is a cache that can
  be rebuilt from the manifests; the markers are how the marks survive that rebuild. A marker names the round and
  commit time of the manifest it condemns, so a later checkpoint that reuses the name is not condemned with it.
  ``trainkeep verify`` writes only a marker (a live writer may hold the index); the writer reads it before any
  deletion, and every reader applies it when it loads the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from trainkeep._internal.core.layout import INTERNAL_DIR
from trainkeep._internal.core.manifest import IndexEntry, RunIndex, encode
from trainkeep._internal.core.retention import Record
from trainkeep._internal.storage import Storage

logger = logging.getLogger(__name__)

MARK_PREFIX = "corrupt-"
MARK_SCHEMA = "trainkeep.corrupt"


@dataclass(frozen=True)
class Mark:
    """A marker file's content: which commit of checkpoint ``name`` failed verification, and why."""

    name: str
    round: int
    time: float
    reason: str

    def condemns(self, entry: IndexEntry) -> bool:
        """Return True when this mark was made for the commit that ``entry`` lists (not a reuse of its name)."""
        return (entry.name, entry.round, entry.time) == (self.name, self.round, self.time)


def mark_path(storage: Storage, run_path: str, name: str) -> str:
    """Return the path of the corrupt marker of checkpoint ``name``."""
    return storage.join(run_path, INTERNAL_DIR, f"{MARK_PREFIX}{name}.json")


def records_of(index: RunIndex) -> list[Record]:
    """Return the index's checkpoints as retention records (with their corrupt marks), in index order."""
    return [Record(c.name, c.round, c.metrics, c.corrupt is not None) for c in index.checkpoints]


def write_mark(storage: Storage, run_path: str, entry: IndexEntry, reason: str) -> None:
    """Write the marker that condemns ``entry`` (atomically; a crash leaves the old marker or none).

    Raises:
        StorageError when storage fails.
    """
    document = {"schema": MARK_SCHEMA, "version": 1, "checkpoint": entry.name, "round": entry.round,
                "time": entry.time, "reason": reason, "marked": time.time()}
    storage.write_atomic(mark_path(storage, run_path, entry.name), encode(document))


def clear_mark(storage: Storage, run_path: str, name: str) -> None:
    """Delete the marker of checkpoint ``name`` (after the checkpoint itself is gone); a missing one is fine."""
    try:
        storage.delete_file(mark_path(storage, run_path, name))
    except FileNotFoundError:
        pass


def set_corrupt(index: RunIndex, name: str, reason: str, *, announce: bool = True) -> bool:
    """Mark the index entry ``name`` corrupt with ``reason`` (in memory); return True when it changed.

    ``announce`` logs a warning (a new finding); a mark read back from its marker file is logged at debug level.
    """
    for i, entry in enumerate(index.checkpoints):
        if entry.name == name and entry.corrupt is None:
            index.checkpoints[i] = dataclasses.replace(entry, corrupt=reason)
            logger.log(logging.WARNING if announce else logging.DEBUG,
                       "checkpoint %s is marked corrupt (%s): it is never deleted automatically; "
                       "`trainkeep prune RUN --corrupt` deletes it", name, reason)
            return True
    return False


def mark_corrupt(storage: Storage, run_path: str, index: RunIndex, name: str, reason: str) -> bool:
    """Condemn checkpoint ``name``: write its marker, then mark its index entry. Return True when it changed.

    The caller writes the index. If the process dies in between, the marker alone marks it on the next load.

    Raises:
        StorageError when the marker cannot be written (the entry is then still marked in memory).
    """
    entry = next((c for c in index.checkpoints if c.name == name), None)
    if entry is None or entry.corrupt is not None:
        return False
    try:
        write_mark(storage, run_path, entry, reason)
    finally:
        changed = set_corrupt(index, name, reason)
    return changed


def read_marks(storage: Storage, run_path: str, names: Iterable[str] | None = None) -> dict[str, Mark]:
    """Return the valid corrupt markers of the run (of ``names`` only, when given), by checkpoint name.

    A marker that does not parse is ignored with a warning: it is ours, and a damaged one condemns nothing.
    """
    if names is None:
        prefix, suffix = MARK_PREFIX, ".json"
        listing = storage.listdir(storage.join(run_path, INTERNAL_DIR))
        names = [f[len(prefix):-len(suffix)] for f in listing if f.startswith(prefix) and f.endswith(suffix)]
    marks: dict[str, Mark] = {}
    for name in names:
        path = mark_path(storage, run_path, name)
        try:
            raw = storage.read_bytes(path)
        except FileNotFoundError:
            continue
        mark = _parse_mark(raw, name)
        if mark is None:
            logger.warning("ignoring the damaged corrupt marker %s", path)
            continue
        marks[name] = mark
    return marks


def apply_marks(index: RunIndex, marks: dict[str, Mark]) -> bool:
    """Mark corrupt every index entry that one of ``marks`` condemns; return True when any changed."""
    changed = False
    for entry in list(index.checkpoints):
        mark = marks.get(entry.name)
        if mark is not None and entry.corrupt is None and mark.condemns(entry):
            changed = set_corrupt(index, entry.name, mark.reason, announce=False) or changed
    return changed


def _parse_mark(raw: bytes, name: str) -> Mark | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and data.get("schema") == MARK_SCHEMA and data.get("checkpoint") == name):
        return None
    round_, time_, reason = data.get("round"), data.get("time"), data.get("reason")
    if not (isinstance(round_, int) and isinstance(time_, (int, float)) and isinstance(reason, str) and reason):
        return None
    return Mark(name, round_, float(time_), reason)
