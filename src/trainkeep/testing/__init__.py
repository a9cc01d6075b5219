"""Fault injection for trainkeep and for any storage you run it on.

* :class:`FaultyStorage` wraps a Storage: it counts and records every operation (and, on a local disk, every
  system call that changes it), and can SIGKILL the process before operation k, raise a SimulatedCrash there,
  fail it with a chosen errno, or skip an fsync.
* :func:`check_crash_points` runs one report-commit-prune :class:`Cycle` and crashes it before each of its
  operations in turn, checking DESIGN §5's promises after each (:func:`check_run`).
* :func:`check_io_errors` fails each write of a report in turn (ENOSPC, EIO, EACCES) and checks the outcome.
* :func:`check_power_loss` replays a local-disk cycle on a model of a disk that loses what was not fsynced,
  and checks every state a power cut could leave.
* ``trainkeep.testing.injection`` carries faults into a trainer's worker processes (``inject(trainer, Faults(...))``).

See docs/testing.md for how to run these against your own storage.
"""

from __future__ import annotations

from trainkeep.testing.crashpoints import CrashPointReport, check_crash_points
from trainkeep.testing.cycle import DEFAULT_FILES, Cycle, copy_run, metrics_for, scratch_dir
from trainkeep.testing.faults import (
    FaultyStorage,
    Op,
    SimulatedCrash,
    injected_error,
    is_call_write,
    is_sync,
    is_syscall_write,
    is_write,
)
from trainkeep.testing.invariants import Expectation, RunReport, check_run
from trainkeep.testing.ioerrors import ErrorOutcome, IOErrorReport, check_io_errors
from trainkeep.testing.powerloss import DiskModel, PowerLossReport, check_power_loss

__all__ = [
    "DEFAULT_FILES",
    "CrashPointReport",
    "Cycle",
    "DiskModel",
    "ErrorOutcome",
    "Expectation",
    "FaultyStorage",
    "IOErrorReport",
    "Op",
    "PowerLossReport",
    "RunReport",
    "SimulatedCrash",
    "check_crash_points",
    "check_io_errors",
    "check_power_loss",
    "check_run",
    "copy_run",
    "injected_error",
    "is_call_write",
    "is_sync",
    "is_syscall_write",
    "is_write",
    "metrics_for",
    "scratch_dir",
]
