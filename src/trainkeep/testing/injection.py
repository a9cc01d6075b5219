"""Faults inside a trainer run: the factory to name in ``TRAINKEEP_STORAGE_WRAPPER`` (see trainer/injection.py).

The ASYNC upload path runs in the worker processes, out of a test's reach; this factory, named in the
environment the workers inherit, wraps their storage (and the driver's) in a FaultyStorage configured by
``TRAINKEEP_FAULTS``, a JSON object::

    os.environ["TRAINKEEP_STORAGE_WRAPPER"] = "trainkeep.testing.injection:faulty_storage"
    os.environ["TRAINKEEP_FAULTS"] = json.dumps({"role": "worker", "fail_at": 1, "errno": errno.ENOSPC,
                                                 "among": "syscall_write", "once": str(tmp_path / "fired")})

Keys: ``role`` ("driver" or "worker": who gets the fault); ``fail_at`` (k), ``errno``, ``among`` ("write",
"syscall_write" or "call_write") and ``partial``: fail the k-th such operation; ``kill_before`` (k): SIGKILL
before operation k; a worker kills its driver first, so the whole job dies, as on a lost machine; ``once``
(a path): only the first process of that role to start gets the fault (it creates the file), so a
restarted worker group or a second ``fit()`` runs clean; ``log`` (a path): append one line per operation
of that role to this file, to count them in an uninterrupted run.
"""

from __future__ import annotations

import errno as _errno
import json
import os
from typing import Any

from trainkeep.storage import Storage
from trainkeep.testing.faults import FaultyStorage, Op, is_call_write, is_syscall_write, is_write

FAULTS_ENV = "TRAINKEEP_FAULTS"
WRAPPER = "trainkeep.testing.injection:faulty_storage"
_AMONG = {"write": is_write, "syscall_write": is_syscall_write, "call_write": is_call_write}


def faulty_storage(storage: Storage, role: str) -> Storage:
    """Return ``storage`` wrapped with the faults of $TRAINKEEP_FAULTS meant for ``role`` (else unchanged).

    Raises:
        ValueError when $TRAINKEEP_FAULTS is not a JSON object of the keys above.
    """
    plan: dict[str, Any] = json.loads(os.environ.get(FAULTS_ENV) or "{}")
    if not isinstance(plan, dict) or set(plan) - {"role", "fail_at", "errno", "among", "partial", "kill_before",
                                                  "once", "log"}:
        raise ValueError(f"{FAULTS_ENV} must be a JSON object with the keys of trainkeep.testing.injection, "
                         f"got {plan!r}")
    if plan.get("role", "worker") != role or not _first(plan.get("once")):
        return storage
    faulty = _LoggedStorage(storage, plan["log"]) if plan.get("log") else FaultyStorage(storage, record=False)
    if "fail_at" in plan:
        faulty.fail_at(int(plan["fail_at"]), int(plan.get("errno", _errno.EIO)), _AMONG[plan.get("among", "write")],
                       bool(plan.get("partial", False)))
    if "kill_before" in plan:
        faulty.kill_before(int(plan["kill_before"]), also_kill=[os.getppid()] if role == "worker" else [])
    return faulty


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
