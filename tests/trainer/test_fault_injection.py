"""Fault injection reaches storage through explicit arguments only (no environment, no mutation)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import trainkeep as tk
from trainkeep._internal.storage import LocalStorage
from trainkeep._internal.storage.syscalls import SYSCALLS
from trainkeep.testing import FaultyStorage, is_syscall_write
from trainkeep.testing.injection import Faults, inject


def test_faulty_storage_hooks_a_local_disk_s_syscalls_without_changing_the_object_it_wraps(tmp_path: Path) -> None:
    given = LocalStorage()
    faulty = FaultyStorage(given)
    assert given.syscalls is SYSCALLS  # untouched: the wrapper built its own LocalStorage(syscalls=...)
    faulty.fail_at(1, errno.ENOSPC, among=is_syscall_write)
    with pytest.raises(tk.StorageError, match="ENOSPC|No space"):
        faulty.write_atomic(str(tmp_path / "f"), b"data")
    assert [op.name for op in faulty.ops if op.level == "syscall"][:1] == ["create"]
    given.write_atomic(str(tmp_path / "g"), b"data")  # the object passed in still writes, unhooked
    assert (tmp_path / "g").read_bytes() == b"data"


def test_a_local_storage_takes_its_syscalls_as_an_argument() -> None:
    hooked = FaultyStorage(LocalStorage(), syscalls=False)
    assert hooked.inner.syscalls is SYSCALLS  # type: ignore[attr-defined]
    assert LocalStorage(syscalls=SYSCALLS).syscalls is SYSCALLS


def test_inject_gives_a_trainer_its_fault_plan_explicitly_and_checks_its_arguments() -> None:
    trainer = tk.DataParallelTrainer(lambda: None)
    plan = Faults(role="driver", fail_at=1)
    assert inject(trainer, plan) is trainer and trainer._storage_wrapper is plan
    assert tk.DataParallelTrainer(lambda: None)._storage_wrapper is None
    with pytest.raises(TypeError, match="needs a trainkeep.DataParallelTrainer"):
        inject(object(), plan)
    with pytest.raises(TypeError, match="needs a trainkeep.testing.injection.Faults"):
        inject(trainer, {"fail_at": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Faults.among must be one of .* got 'reads'"):
        Faults(among="reads")
