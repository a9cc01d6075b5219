"""I/O errors at every write: fail the k-th write of a report with ENOSPC, EIO or EACCES, for every k.

:func:`check_io_errors` opens a run that already holds a checkpoint (with ``num_to_keep=1``, so that retention
would delete it after a successful commit), reports a metrics-only round and a checkpoint with the k-th write
failing, and checks DESIGN §5's promise 6: the report fails with a typed StorageError that names the path and
the errno; nothing new is visible unless the error came after the commit point (then the new checkpoint is
whole); nothing old was deleted to make room; no fsync that failed was retried. Then it removes the fault and
reports again with the same manager: that must succeed with no manual step, and the closed run must pass
:func:`~trainkeep.testing.check_run`.

The only errors allowed to pass silently are those of deleting a checkpoint that retention let go of: the
run keeps it in its ``retiring`` list and the next open finishes the delete.
"""

from __future__ import annotations

import errno as _errno
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import Storage
from trainkeep.errors import StorageError
from trainkeep.testing.cycle import Cycle, copy_run, metrics_for
from trainkeep.testing.faults import FaultyStorage, Op, is_sync, is_write
from trainkeep.testing.invariants import Expectation, check_run

DEFAULT_ERRNOS = (_errno.ENOSPC, _errno.EIO, _errno.EACCES)


@dataclass
class ErrorOutcome:
    """What one injected error did: at which operation, what the report raised, what was committed."""

    k: int
    errno: int
    op: str = ""
    raised: str = ""
    committed: bool = False
    violations: list[str] = field(default_factory=list)


@dataclass
class IOErrorReport:
    """The result of :func:`check_io_errors`: ``writes`` candidate operations, one outcome per k."""

    writes: int
    outcomes: list[ErrorOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def injected(self) -> int:
        return len(self.outcomes)

    def describe(self) -> str:
        failed = sum(1 for o in self.outcomes if o.raised)
        bad = sum(1 for o in self.outcomes if o.violations)
        return (f"{self.injected} errors injected over {self.writes} writes: {failed} reports failed as they "
                f"should, {self.injected - failed} errors fell in retention's deletes, {bad} with violations, "
                f"{self.seconds:.1f} s")

    def assert_ok(self) -> None:
        """Raise AssertionError listing every injected error whose outcome broke a promise."""
        problems = [f"error {o.k} ({_errno.errorcode[o.errno]} at {o.op}): {v}"
                    for o in self.outcomes for v in o.violations]
        if self.injected != self.writes:
            problems.append(f"only {self.injected} of {self.writes} writes were failed")
        if problems:
            raise AssertionError(f"{self.describe()}\n" + "\n".join(problems[:40]))


def check_io_errors(
    make_storage: Callable[[], Storage],
    root: str,
    *,
    scratch: str,
    errnos: Sequence[int] = DEFAULT_ERRNOS,
    among: Callable[[Op], bool] = is_write,
    partial: bool = False,
    points: Sequence[int] | None = None,
) -> IOErrorReport:
    """Fail each write of a report in turn (the k-th with ``errnos[k % len(errnos)]``) and check each outcome.

    Args:
        make_storage: returns a fresh Storage for the store under test.
        root: a directory (path on that storage) under which this check creates its runs.
        scratch: a local directory for the checkpoints' source files.
        among: which operations count as writes (e.g. ``is_syscall_write`` on a local disk).
        partial: let a failing write or copy system call write half of its data first (a disk filling up).
        points: only these k (default: every write, 1..n).
    """
    started = time.monotonic()
    cycle = Cycle(CheckpointConfig(num_to_keep=1), earlier=1)
    storage = make_storage()
    template = storage.join(root, f"template-{uuid.uuid4().hex[:8]}")
    cycle.prepare(storage, template, scratch)
    counting = _Attempt(make_storage, storage, template, cycle, scratch)
    counting.report(None)
    writes = sum(1 for op in counting.faulty.ops if op.index > counting.start and among(op))
    counting.manager.close()
    report = IOErrorReport(writes)
    for k in points if points is not None else range(1, writes + 1):
        errno = errnos[k % len(errnos)]
        attempt = _Attempt(make_storage, storage, template, cycle, scratch)
        report.outcomes.append(attempt.check(k, errno, among, partial))
    report.seconds = time.monotonic() - started
    return report


class _Attempt:
    """One run copied from the template, opened through a FaultyStorage, reported to with one fault."""

    def __init__(self, make_storage: Callable[[], Storage], storage: Storage, template: str, cycle: Cycle,
                 scratch: str) -> None:
        self.cycle, self.make_storage = cycle, make_storage
        self.run = storage.join(template + f"-{uuid.uuid4().hex[:8]}")
        copy_run(storage, template, self.run)
        self.faulty = FaultyStorage(make_storage())
        self.manager = CheckpointManager(self.run, cycle.config, self.faulty.fs, storage=self.faulty)
        self.run = self.manager.path  # as the storage calls name it (no protocol)
        self.before = [c.path.rstrip("/").rsplit("/", 1)[-1] for c, _ in self.manager.checkpoints]
        self.src = cycle.source(scratch)
        self.scratch = scratch
        self.start = self.faulty.count

    def report(self, fault: tuple[int, int, Callable[[Op], bool], bool] | None) -> BaseException | None:
        """Report a metrics-only round and a checkpoint, with ``fault`` armed; return what it raised."""
        if fault is not None:
            k, errno, among, partial = fault
            self.faulty.fail_at(k, errno, among, partial)
        try:
            self.manager.report(metrics_for(self.manager.next_round))
            self.manager.report(metrics_for(self.manager.next_round), Checkpoint.from_directory(self.src))
        except Exception as exc:
            return exc
        finally:
            self.faulty.heal()
        return None

    def check(self, k: int, errno: int, among: Callable[[Op], bool], partial: bool) -> ErrorOutcome:
        outcome = ErrorOutcome(k, errno)
        bad = outcome.violations.append
        raised = self.report((k, errno, among, partial))
        failed = next((op for op in self.faulty.ops if op.index > self.start and op.error and among(op)), None)
        outcome.op = str(failed) if failed else "nothing"
        if failed is None:
            bad("the fault was never reached")
        name = self.cycle.name
        outcome.committed = self.faulty.inner.exists(self.faulty.inner.join(self.run, name, MANIFEST_NAME))
        outcome.raised = "" if raised is None else f"{type(raised).__name__}: {raised}"
        if raised is not None:
            self._check_error(raised, errno, bad)
        elif failed is not None and not self._in_retiring_delete(failed):
            bad(f"the report succeeded although {failed} failed: an I/O error was swallowed")
        self._check_nothing_lost(outcome.committed, bad)
        self._check_no_fsync_retry(failed, bad)
        self._check_retry(bad)
        return outcome

    def _check_error(self, raised: BaseException, errno: int, bad: Callable[[str], None]) -> None:
        if not isinstance(raised, StorageError):
            bad(f"the report raised {type(raised).__name__}: {raised}, not a StorageError")
            return
        if raised.errno != errno:
            bad(f"the StorageError carries errno {raised.errno}, not the injected {errno}: {raised}")
        if not raised.path or raised.path not in str(raised) or _errno.errorcode[errno] not in str(raised):
            bad(f"the StorageError does not name the path and the errno: {raised}")

    def _in_retiring_delete(self, op: Op) -> bool:
        """Return True for a failed delete inside a checkpoint that retention let go of (errors allowed)."""
        deleting = op.name in ("unlink", "rmdir", "delete_file", "delete_tree", "fsync_dir", "sync_dir")
        return deleting and any(op.path.startswith(self.faulty.inner.join(self.run, b)) for b in self.before)

    def _check_nothing_lost(self, committed: bool, bad: Callable[[str], None]) -> None:
        storage = self.faulty.inner
        doomed = self.cycle.retention_deletes() if committed else frozenset()
        for name in self.before:
            if name in doomed:
                continue
            problems = verify_checkpoint(storage, self.run, name)
            if problems:
                bad(f"checkpoint {name}, committed before, no longer verifies: {problems[0]}")
        if committed and verify_checkpoint(storage, self.run, self.cycle.name):
            bad(f"checkpoint {self.cycle.name} has a manifest but does not verify")

    def _check_no_fsync_retry(self, failed: Op | None, bad: Callable[[str], None]) -> None:
        if failed is None or not is_sync(failed):
            return
        again = [op for op in self.faulty.ops if op.index > failed.index and is_sync(op) and op.path == failed.path
                 and not op.error]
        if again:
            bad(f"a failed fsync was retried: {failed} then {again[0]}")

    def _check_retry(self, bad: Callable[[str], None]) -> None:
        """Report again without the fault: it must succeed; then the run must be consistent."""
        try:
            self.manager.report(metrics_for(self.manager.next_round))
            self.manager.report(metrics_for(self.manager.next_round),
                                Checkpoint.from_directory(self.cycle.source(self.scratch)))
        except Exception as exc:
            bad(f"the next report, without the fault, failed: {type(exc).__name__}: {exc}")
        in_memory = [c.path.rstrip("/").rsplit("/", 1)[-1] for c, _ in self.manager.checkpoints]
        on_storage = [c.name for c in read_run(self.make_storage(), self.run).index.checkpoints]
        if in_memory != on_storage:
            bad(f"the manager lists {in_memory} but storage holds {on_storage}")
        self.manager.close()
        names = tuple(n for n in in_memory if n not in self.before) + (self.cycle.name,)
        expect = Expectation(self.cycle.config, tuple(self.before), frozenset(self.before), names, rows=None)
        for problem in check_run(self.make_storage(), self.run, expect).violations:
            bad(f"after the retry: {problem}")
