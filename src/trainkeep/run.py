"""Reading a run without changing it: the run index, manifests, history, and verification of files.

The manager builds on these to resume a run; ``Result.from_path`` and the CLI use them read-only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from trainkeep.config import CheckpointConfig
from trainkeep.errors import CorruptRunError, IncompatibleRunError, RunNotFoundError
from trainkeep.layout import (
    HISTORY_NAME,
    INTERNAL_DIR,
    LOG_PARTS_SUFFIX,
    MANIFEST_NAME,
    METADATA_NAME,
    RUN_INDEX_NAME,
    is_reserved_file,
)
from trainkeep.manifest import IndexEntry, Manifest, RunIndex, parse_history, parse_manifest, parse_run_index
from trainkeep.storage import Storage, iter_files

logger = logging.getLogger(__name__)

HISTORY_PARTS_NAME = HISTORY_NAME + LOG_PARTS_SUFFIX  # object stores keep the history in parts (storage/parts.py)


@dataclass
class RunState:
    """What is on storage for one run, reconciled: the index agrees with the manifests after loading."""

    path: str
    index: RunIndex
    history: list[dict[str, Any]]
    history_valid_bytes: int
    history_total_bytes: int
    problems: list[str] = field(default_factory=list)
    index_rebuilt: bool = False
    index_changed: bool = False

    @property
    def next_round(self) -> int:
        last_history = self.history[-1]["round"] + 1 if self.history else 0
        last_ckpt = max((c.round + 1 for c in self.index.checkpoints), default=0)
        return max(self.index.next_round, last_history, last_ckpt)


def manifest_path(storage: Storage, run_path: str, name: str) -> str:
    return storage.join(run_path, name, MANIFEST_NAME)


def read_manifest(storage: Storage, run_path: str, name: str) -> Manifest:
    """Read and validate the manifest of checkpoint ``name``.

    Raises:
        FileNotFoundError when there is none; CorruptRunError when it is invalid or names another checkpoint.
    """
    path = manifest_path(storage, run_path, name)
    manifest = parse_manifest(storage.read_bytes(path), path)
    if manifest.name != name:
        raise CorruptRunError(path, f"manifest names checkpoint {manifest.name!r} but lies in {name!r}")
    return manifest


def is_run(storage: Storage, run_path: str) -> bool:
    """Return True when ``run_path`` holds a trainkeep run (an index, a history or our internal dir)."""
    names = set(storage.listdir(run_path))
    return bool(names & {RUN_INDEX_NAME, HISTORY_NAME, HISTORY_PARTS_NAME, INTERNAL_DIR})


def read_run(storage: Storage, run_path: str, checkpoint_config: CheckpointConfig | None = None) -> RunState:
    """Load a run's state from storage without writing anything.

    The index is cross-checked against the directories present: a committed checkpoint missing from the index
    (a crash between manifest and index) is added; an index entry whose manifest is gone is dropped with a
    warning. A missing or corrupt index is rebuilt from the manifests.

    Raises:
        RunNotFoundError when the path holds no run; IncompatibleRunError for a newer format.
    """
    if not is_run(storage, run_path):
        raise RunNotFoundError(f"no trainkeep run at {run_path} (no {RUN_INDEX_NAME} or {HISTORY_NAME} there)")
    problems: list[str] = []
    index, rebuilt = _read_index(storage, run_path, checkpoint_config, problems)
    changed = _reconcile(storage, run_path, index, problems) or rebuilt
    raw_history, history_parts = storage.read_log(storage.join(run_path, HISTORY_NAME))
    history, valid = parse_history(raw_history, history_parts)
    return RunState(run_path, index, history, valid, len(raw_history), problems, rebuilt, changed)


def read_history(storage: Storage, run_path: str) -> list[dict[str, Any]]:
    """Return every completed round of the run's history, in round order (a torn last line is left out)."""
    raw_history, history_parts = storage.read_log(storage.join(run_path, HISTORY_NAME))
    return parse_history(raw_history, history_parts)[0]


def _read_optional(storage: Storage, path: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return b""


def _read_index(
    storage: Storage, run_path: str, config: CheckpointConfig | None, problems: list[str]
) -> tuple[RunIndex, bool]:
    path = storage.join(run_path, RUN_INDEX_NAME)
    try:
        return parse_run_index(storage.read_bytes(path), path), False
    except FileNotFoundError:
        pass
    except IncompatibleRunError:
        raise
    except CorruptRunError as exc:
        problems.append(f"run index is corrupt ({exc.reason}); rebuilt from the checkpoint manifests")
        logger.warning("run index %s is corrupt (%s); rebuilding it from the manifests", path, exc.reason)
    now = time.time()
    return RunIndex((config or CheckpointConfig()).to_dict(), created=now, updated=now), True


def _reconcile(storage: Storage, run_path: str, index: RunIndex, problems: list[str]) -> bool:
    present = set(storage.listdir(run_path))
    listed = {c.name for c in index.checkpoints}
    changed = False
    kept: list[IndexEntry] = []
    for entry in index.checkpoints:
        if entry.name in present and storage.exists(manifest_path(storage, run_path, entry.name)):
            kept.append(entry)
            continue
        problems.append(f"checkpoint {entry.name} is listed in the run index but its manifest is missing")
        logger.warning("checkpoint %s of run %s is in the index but has no manifest; dropping it from the "
                       "index (its files, if any, are left alone)", entry.name, run_path)
        changed = True
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


@dataclass(frozen=True)
class Problem:
    """One reason a checkpoint does not verify."""

    checkpoint: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.checkpoint}: {self.path}: {self.reason}"


def verify_checkpoint(storage: Storage, run_path: str, name: str, *, checksums: bool = True) -> list[Problem]:
    """Re-read a checkpoint's files against its manifest; return every problem found ([] when it verifies).

    Detects a missing or invalid manifest, missing files, wrong sizes, wrong checksums and files that the
    manifest does not list. The user metadata file is exempt: ``Checkpoint.set_metadata`` may change it.
    """
    try:
        manifest = read_manifest(storage, run_path, name)
    except FileNotFoundError:
        return [Problem(name, MANIFEST_NAME, "manifest is missing")]
    except (CorruptRunError, IncompatibleRunError) as exc:
        return [Problem(name, MANIFEST_NAME, str(getattr(exc, "reason", exc)))]
    root = storage.join(run_path, name)
    problems: list[Problem] = []
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        if entry.path == METADATA_NAME:
            continue
        path = f"{root}/{entry.path}"
        try:
            size = storage.size(path)
        except FileNotFoundError:
            problems.append(Problem(name, entry.path, "file is missing"))
            continue
        if size != entry.size:
            problems.append(Problem(name, entry.path, f"size is {size} bytes, manifest says {entry.size}"))
            continue
        if checksums:
            _, digest = storage.checksum(path)
            if digest != entry.checksum:
                problems.append(Problem(name, entry.path, f"checksum is {digest}, manifest says {entry.checksum}"))
    for rel in iter_files(storage, root):
        if rel not in listed and not is_reserved_file(rel) and rel != METADATA_NAME:
            problems.append(Problem(name, rel, "file is not listed in the manifest"))
    return problems
