"""One report-commit-prune cycle: the unit of work whose every crash point the fault checks explore.

The cycle opens a run (which may hold ``earlier`` checkpoints), records a metrics-only round, reports one
checkpoint (SYNC: ``CheckpointManager.report``; ASYNC: the trainer's path, the files handed over to a
background uploader and moved, then committed), records another metrics-only round, and closes the run. It
marks where the report and the close returned, so that a checker knows what had been promised at a crash.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import LOCK_NAME, default_checkpoint_name
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.core.retention import Record, decide
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.storage import Storage, list_source_files
from trainkeep.testing.faults import FaultyStorage, Op
from trainkeep.testing.invariants import Expectation

DEFAULT_FILES: Mapping[str, bytes] = {
    "model.bin": b"weights-" * 64,
    "optim/state.bin": b"moments-" * 32,
    "meta.json": b'{"framework": "none"}\n',
}
REPORTED, CLOSED = "reported", "closed"


def metrics_for(round_index: int) -> dict[str, Any]:
    """Return the metrics reported for ``round_index`` (a score that improves every round)."""
    return {"step": round_index, "loss": round(1.0 / (round_index + 1), 6)}


@dataclass(frozen=True)
class Cycle:
    """One cycle of work on a run; see the module docstring.

    Args:
        config: the run's CheckpointConfig (``num_to_keep=1`` with ``earlier >= 1`` makes retention delete).
        earlier: how many checkpoints :meth:`prepare` commits before the cycle.
        upload: "sync" or "async".
        files: the checkpoint's files, {relative path: bytes}.
    """

    config: CheckpointConfig = field(default_factory=CheckpointConfig)
    earlier: int = 0
    upload: str = "sync"
    files: Mapping[str, bytes] = field(default_factory=lambda: dict(DEFAULT_FILES))

    def __post_init__(self) -> None:
        if self.upload not in ("sync", "async"):
            raise ValueError(f"upload must be 'sync' or 'async', got {self.upload!r}")
        if not isinstance(self.earlier, int) or self.earlier < 0:
            raise ValueError(f"earlier must be an integer >= 0, got {self.earlier!r}")

    @property
    def name(self) -> str:
        """The name of the checkpoint the cycle reports."""
        return default_checkpoint_name(self.earlier + 1)

    def prepare(self, storage: Storage, path: str, scratch: str) -> None:
        """Commit the ``earlier`` checkpoints of the run at ``path`` and close it (sources under ``scratch``).

        A crash inside leaves a run with fewer checkpoints (prepare runs before any fault is armed).
        """
        with CheckpointManager(path, self.config, storage.fs, storage=storage) as manager:
            for round_index in range(self.earlier):
                src = write_files(scratch, f"earlier_{round_index}", self.files)
                manager.report(metrics_for(round_index), Checkpoint.from_directory(src))

    def source(self, scratch: str) -> str:
        """Write the checkpoint's files into a new directory under local directory ``scratch``; return it.

        They are written as a training loop writes them: without fsync, and not through the storage.
        """
        return write_files(scratch, f"source_{os.getpid()}_{uuid.uuid4().hex[:8]}", self.files)

    def run(self, storage: FaultyStorage, path: str, src: str) -> None:
        """Run the cycle on ``path`` through ``storage``, reporting the files in local directory ``src``
        (from :meth:`source`); mark where the report and the close returned.

        A crash inside leaves whatever the engine leaves at that point: what the fault checks examine.
        """
        manager = CheckpointManager(path, self.config, storage.fs, storage=storage)
        manager.report(metrics_for(self.earlier))
        if self.upload == "sync":
            manager.report(metrics_for(self.earlier + 1), Checkpoint.from_directory(src))
        else:
            report_async(manager, storage, metrics_for(self.earlier + 1), src)
        storage.mark(REPORTED, self.name)
        manager.report(metrics_for(self.earlier + 2))
        manager.close()
        storage.mark(CLOSED)

    def expectation(self, marks: list[Op], done: int) -> Expectation:
        """Return what must hold after a crash once ``done`` operations of the cycle had started.

        ``marks`` are the marks of an uninterrupted run of the cycle (their positions are the same in every
        run, since the cycle is deterministic).
        """
        reached = {m.name for m in marks if m.level == "mark" and (m.returned_at or 0) <= done}
        e, kept = self.earlier, self.kept_before()
        before = tuple(n for n in (default_checkpoint_name(r) for r in range(e)) if n in kept)
        rows: tuple[tuple[int, str | None], ...] = tuple((r, default_checkpoint_name(r)) for r in range(e))
        rows += ((e, None), (e + 1, self.name), (e + 2, None))  # the cycle's three rounds
        durable_rows = e + 3 if CLOSED in reached else e + 2 if REPORTED in reached else e
        durable = frozenset({self.name}) if REPORTED in reached else frozenset()
        return Expectation(self.config, before, self.retention_deletes(), (self.name,), durable, rows, durable_rows)

    def kept_before(self) -> set[str]:
        """Return the earlier checkpoints still committed when the cycle starts (prepare's retention ran)."""
        kept: list[Record] = []
        for r in range(self.earlier):
            kept.append(Record(default_checkpoint_name(r), r, metrics_for(r)))
            doomed = {d.name for d in decide(kept, self.config, set()).delete}
            kept = [k for k in kept if k.name not in doomed]
        return {k.name for k in kept}

    def retention_deletes(self) -> frozenset[str]:
        """Return what retention deletes when the cycle's checkpoint commits (the pure decision)."""
        records = [Record(n, int(n.rsplit("_", 1)[1]), metrics_for(int(n.rsplit("_", 1)[1])))
                   for n in sorted(self.kept_before())]
        records.append(Record(self.name, self.earlier + 1, metrics_for(self.earlier + 1)))
        return frozenset(d.name for d in decide(records, self.config, set()).delete)


def report_async(manager: CheckpointManager, storage: Storage, metrics: dict[str, Any], src: str) -> None:
    """Report ``src`` the way the trainer's ASYNC mode does: stage, hand the files over to a background
    uploader that moves them (``delete_local_checkpoint_after_upload``'s default), then commit the staged
    checkpoint: the same CheckpointManager.stage and StagedCheckpoint.commit calls as the trainer's controller.

    Raises what the upload or the commit raised; a failed upload leaves its staged directory to the sweep.
    """
    from trainkeep._internal.trainer.uploader import AsyncUploader

    clean, _ = manager.validate_report(metrics, None, None)
    staged = manager.stage(default_checkpoint_name(manager.next_round))
    files = list_source_files(src)
    entries: list[FileEntry] = []
    uploader = AsyncUploader(lambda job: entries.extend(storage.put_tree(src, staged.path, files, move=True).entries),
                             lambda exc: None)  # close() raises the upload's error
    uploader.submit(staged.name)
    uploader.close()
    staged.commit(clean, entries)


def write_files(scratch: str, name: str, files: Mapping[str, bytes]) -> str:
    """Write ``files`` into a new directory ``scratch/name``; return its path."""
    root = os.path.join(scratch, name)
    for rel, data in files.items():
        target = os.path.join(root, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    os.makedirs(root, exist_ok=True)
    return root


def copy_run(storage: Storage, src: str, dest: str) -> None:
    """Copy every file of the run at ``src`` to the fresh path ``dest`` on ``storage`` (not its lock).

    Uses the filesystem's own copy (server-side on object stores), so a prepared run is cheap to clone. A
    crash inside leaves a partial copy at ``dest``, a path nothing else uses.

    Raises:
        FileExistsError when ``dest`` already holds something.
    """
    fs = storage.fs
    src, dest = fs._strip_protocol(src).rstrip("/"), fs._strip_protocol(dest).rstrip("/")
    if fs.exists(dest):
        raise FileExistsError(f"{dest} exists; copy a run only to a fresh path")
    sources = [p for p in fs.find(src) if p.rsplit("/", 1)[-1] != LOCK_NAME]
    targets = [dest + p[len(src):] for p in sources]
    if storage.is_local:
        for target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.copy(sources, targets)
    fs.invalidate_cache()


def scratch_dir(prefix: str = "trainkeep-faults-") -> str:
    """Return a new local temp directory, on tmpfs (/dev/shm) when there is one: fsync costs nothing there."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


StorageFactory = Callable[[], Storage]
