"""Faults inside a trainer run: a picklable storage wrapper that a trainer carries to its workers.

The ASYNC upload path runs in the worker processes, out of a test's reach. :func:`inject` gives a trainer a
:class:`Faults` plan explicitly; the trainer wraps the storage of its driver with ``plan(storage, "driver")``
and ships the plan in the workers' start-up spec (``WorkerSpec.storage_wrapper``), where each worker wraps its
storage with ``plan(storage, "worker")``. Nothing is read from the environment::

    trainer = tk.DataParallelTrainer(train, run_config=...)
    inject(trainer, Faults(role="worker", fail_at=1, errno=errno.ENOSPC, among="syscall_write",
                           once=str(tmp_path / "fired")))
    trainer.fit()

Fields: ``role`` ("driver" or "worker": who gets the fault); ``fail_at`` (k), ``errno``, ``among`` ("write",
"syscall_write" or "call_write") and ``partial``: fail the k-th such operation; ``kill_before`` (k): SIGKILL
before operation k; a worker kills its driver first, so the whole job dies, as on a lost machine; ``once``
(a path): only the first process of that role to start gets the fault (it creates the file), so a
restarted worker group or a second ``fit()`` runs clean; ``log`` (a path): append one line per operation
of that role to this file, to count them in an uninterrupted run.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import TypeVar

from trainkeep._internal.storage import Storage
from trainkeep.errors import ConfigError, ConfigTypeError
from trainkeep.testing.faults import FaultyStorage, Op, is_call_write, is_syscall_write, is_write

_AMONG = {"write": is_write, "syscall_write": is_syscall_write, "call_write": is_call_write}
_ROLES = ("driver", "worker")

T = TypeVar("T")


@dataclass(frozen=True)
class Faults:
    """A fault plan for one role of a trainer run; calling it wraps a storage (see the module docstring).

    Raises:
        ConfigError (a ValueError) for an unknown ``role`` or ``among``.
    """

    role: str = "worker"
    fail_at: int | None = None
    errno: int = _errno.EIO
    among: str = "write"
    partial: bool = False
    kill_before: int | None = None
    once: str | None = None
    log: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ConfigError(f"Faults.role must be one of {_ROLES}, got {self.role!r}")
        if self.among not in _AMONG:
            raise ConfigError(f"Faults.among must be one of {tuple(_AMONG)}, got {self.among!r}")

    def __call__(self, storage: Storage, role: str) -> Storage:
        """Return ``storage`` wrapped with these faults when ``role`` is this plan's role (else unchanged)."""
        if role != self.role or not _first(self.once):
            return storage
        faulty = _LoggedStorage(storage, self.log) if self.log else FaultyStorage(storage, record=False)
        if self.fail_at is not None:
            faulty.fail_at(self.fail_at, self.errno, _AMONG[self.among], self.partial)
        if self.kill_before is not None:
            faulty.kill_before(self.kill_before, also_kill=[os.getppid()] if role == "worker" else [])
        return faulty


def inject(trainer: T, faults: Faults) -> T:
    """Give ``trainer`` (a DataParallelTrainer or a subclass) the fault plan ``faults``; return the trainer.

    Raises:
        ConfigTypeError (a TypeError) when ``trainer`` is not a trainkeep trainer or ``faults`` not a Faults.
    """
    from trainkeep._internal.trainer import DataParallelTrainer

    if not isinstance(trainer, DataParallelTrainer):
        raise ConfigTypeError(f"inject() needs a trainkeep.DataParallelTrainer (or subclass), got {trainer!r}")
    if not isinstance(faults, Faults):
        raise ConfigTypeError(f"inject() needs a trainkeep.testing.injection.Faults, got {faults!r}")
    trainer._storage_wrapper = faults
    return trainer


class _LoggedStorage(FaultyStorage):
    """A FaultyStorage that also appends each operation, as one line, to a log file."""

    def __init__(self, inner: Storage, log: str) -> None:
        super().__init__(inner, record=False)
        self._log = log

    def enter(self, op: Op) -> Op:
        op = super().enter(op)
        with open(self._log, "a") as f:
            f.write(f"{op.index} {op.level} {op.name} {op.path}\n")
        return op


def _first(marker: str | None) -> bool:
    """Return True for the first process to claim ``marker`` (always when there is none)."""
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True
