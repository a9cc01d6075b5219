"""Every crash point of a cycle: kill it right before each of its operations, then check the run.

:func:`check_crash_points` is what a user's pytest calls to run the check against their own storage::

    from trainkeep.testing import Cycle, check_crash_points
    from trainkeep._internal.storage import FsspecStorage

    def test_my_store_survives_every_crash(tmp_path):
        report = check_crash_points(lambda: FsspecStorage(my_fs()), "bucket/runs", Cycle(), scratch=str(tmp_path))
        report.assert_ok()

How it works: a first, uninterrupted run of the cycle through a recording FaultyStorage counts its
operations, n. Then for every k in 1..n the cycle runs again on a fresh copy of the same starting run, in a
forked child that SIGKILLs itself right before operation k (``in_process=True``: in this process, with a
:class:`SimulatedCrash` raised at k and the run's objects abandoned without closing, for a store that lives
inside the process such as ``memory://``). After each, this process opens the run with a fresh storage and
checks every promise of DESIGN §5 (see ``invariants.py``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import xxhash

from trainkeep._internal.core.layout import LOCK_NAME
from trainkeep._internal.storage import Storage
from trainkeep.testing.cycle import Cycle, copy_run
from trainkeep.testing.faults import FaultyStorage, Op, SimulatedCrash
from trainkeep.testing.invariants import check_run

logger = logging.getLogger(__name__)


@dataclass
class CrashPointReport:
    """The result of :func:`check_crash_points`.

    Attributes:
        operations: n, the operations of an uninterrupted cycle.
        ops: those operations (and the cycle's marks), as recorded.
        tried: every k at which a crash was made, in order.
        violations: {k: [what broke]} for the crash points where a promise did not hold.
        states: how many distinct crash states were checked (two crash points that leave byte-identical
            runs, e.g. before two reads in a row, share one check).
        seconds: wall time of the whole check.
    """

    operations: int
    ops: list[Op]
    tried: list[int] = field(default_factory=list)
    violations: dict[int, list[str]] = field(default_factory=dict)
    states: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        """Return one line: how many crash points were covered and how many broke a promise."""
        return (f"{len(self.tried)} of {self.operations} crash points covered ({self.states} distinct states "
                f"checked), {len(self.violations)} with violations, {self.seconds:.1f} s")

    def assert_ok(self) -> None:
        """Raise AssertionError naming each crash point (and its operation) where a promise broke, or where
        a crash point was not covered."""
        missing = sorted(set(range(1, self.operations + 1)) - set(self.tried))
        problems = [f"crash point {k} (before {self._op(k)}): {v}" for k, vs in sorted(self.violations.items())
                    for v in vs]
        if missing:
            problems.append(f"crash points not covered: {missing}")
        if problems:
            raise AssertionError(f"{self.describe()}\n" + "\n".join(problems[:40]))

    def _op(self, k: int) -> str:
        return next((str(op) for op in self.ops if op.index == k and op.level != "mark"), f"#{k}")


def check_crash_points(
    make_storage: Callable[[], Storage],
    root: str,
    cycle: Cycle | None = None,
    *,
    scratch: str,
    in_process: bool = False,
    points: Sequence[int] | None = None,
    timeout_s: float = 120.0,
) -> CrashPointReport:
    """Crash ``cycle`` right before each of its operations and check the run after each crash.

    Args:
        make_storage: returns a fresh Storage for the store under test (called in the child, after the fork).
        root: a directory (path on that storage) under which this check creates its runs.
        cycle: the work to crash (default: a first checkpoint, SYNC).
        scratch: a local directory for the checkpoint's source files.
        in_process: crash by raising SimulatedCrash instead of SIGKILL in a child (``memory://``).
        points: only these crash points (default: every one, 1..n).
        timeout_s: how long one child may run.

    Returns the report; call ``assert_ok()`` on it. Raises AssertionError when the uninterrupted cycle itself
    breaks a promise or is not deterministic.
    """
    started = time.monotonic()
    cycle = cycle or Cycle()
    storage = make_storage()
    template = storage.join(root, f"template-{uuid.uuid4().hex[:8]}")
    cycle.prepare(storage, template, scratch)
    ops = _count(make_storage, storage, template, cycle, scratch)
    report = CrashPointReport(max(op.index for op in ops), ops)
    marks = [op for op in ops if op.level == "mark"]
    checked: dict[tuple, list[str]] = {}  # (state, promises) -> violations: a state left twice is checked once

    def check(k: int, run: str, crashed: bool) -> None:
        expect = cycle.expectation(marks, k - 1)
        key = (fingerprint(storage, run), expect.durable, expect.durable_rows)
        if key not in checked:
            checked[key] = check_run(make_storage(), run, expect).violations
        found = checked[key] if crashed else ["the cycle ended without reaching this operation", *checked[key]]
        report.tried.append(k)
        if found:
            report.violations[k] = found

    pending: tuple[int, str, bool] | None = None
    for k in points if points is not None else range(1, report.operations + 1):
        run = storage.join(root, f"k{k:04d}-{uuid.uuid4().hex[:6]}")
        copy_run(storage, template, run)
        if in_process:
            check(k, run, _crash_in_process(make_storage, run, cycle, scratch, k))
            continue
        child = _Child(make_storage, run, cycle, scratch, k)  # forked while this process runs nothing else
        if pending is not None:
            check(*pending)  # the previous crash point is checked while this child runs
        pending = (k, run, child.wait(timeout_s))
    if pending is not None:
        check(*pending)
    report.states = len(checked)
    report.seconds = time.monotonic() - started
    logger.info("crash points of %s: %s", cycle, report.describe())
    return report


def fingerprint(storage: Storage, path: str) -> frozenset[tuple[str, str]] | None:
    """Return what identifies the content under ``path``: (relative name, ETag or checksum) of each file.

    None (never equal to another) when some file has neither an ETag nor can be read. The run lock is left
    out: it names the process that held it.
    """
    fs = storage.fs
    root = fs._strip_protocol(path).rstrip("/")
    out = []
    for name, info in sorted(fs.find(root, detail=True).items()):
        rel = name[len(root):].lstrip("/")
        if rel.rsplit("/", 1)[-1] == LOCK_NAME:
            continue
        tag = info.get("ETag") or info.get("etag")
        if not tag:
            try:
                tag = xxhash.xxh3_128(fs.cat_file(name)).hexdigest()
            except OSError:
                return None
        out.append((rel, str(tag)))
    return frozenset(out)


def _count(make_storage: Callable[[], Storage], storage: Storage, template: str, cycle: Cycle,
           scratch: str) -> list[Op]:
    """Run the cycle uninterrupted on a copy of the template; check it; return its recorded operations."""
    run = storage.join(template + "-count")
    copy_run(storage, template, run)
    faulty = FaultyStorage(make_storage())
    cycle.run(faulty, run, cycle.source(scratch))
    end = check_run(make_storage(), run, cycle.expectation(faulty.ops, faulty.count)).violations
    if end:
        raise AssertionError(f"the uninterrupted cycle already breaks a promise: {end}")
    return faulty.ops


def _crash_in_process(make_storage: Callable[[], Storage], run: str, cycle: Cycle, scratch: str, k: int) -> bool:
    faulty = FaultyStorage(make_storage())
    faulty.crash_before(k)
    try:
        cycle.run(faulty, run, cycle.source(scratch))
    except SimulatedCrash:
        return True
    finally:
        faulty.abandon()  # the manager object is dropped unclosed; only its lock is let go, as a death would
    return False


class _Child:
    """A forked child that runs the cycle and SIGKILLs itself right before operation ``k``."""

    def __init__(self, make_storage: Callable[[], Storage], run: str, cycle: Cycle, scratch: str, k: int) -> None:
        self.k = k
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the caller's code
            os.close(read_end)
            code = 0
            try:
                _freeze_clock()
                src = cycle.source(scratch)
                faulty = FaultyStorage(make_storage())
                faulty.kill_before(k)
                cycle.run(faulty, run, src)
                os.write(write_end, json.dumps({"done": faulty.count}).encode())
            except BaseException:
                os.write(write_end, json.dumps({"error": traceback.format_exc()}).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write_end)
        self.fd = read_end

    def wait(self, timeout_s: float) -> bool:
        """Return True when the child died by SIGKILL.

        Raises AssertionError with the child's traceback when it failed some other way, or hung.
        """
        try:
            output = _read_all(self.fd, self.pid, timeout_s)
        finally:
            os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not output:
            return True
        message = json.loads(output) if output else {}
        if "error" in message:
            raise AssertionError(f"the child crashing at operation {self.k} failed instead:\n{message['error']}")
        return False


FROZEN_TIME = 1_700_000_000.0


def _freeze_clock() -> None:
    """Stop this (child) process's wall clock, so that the same operations leave the same bytes in every
    child (manifests and the index record times); only the fingerprints of crash states depend on it."""
    time.time = lambda: FROZEN_TIME


def _read_all(fd: int, pid: int, timeout_s: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)  # our own child, hung
            os.waitpid(pid, 0)
            raise AssertionError(f"the child (pid {pid}) did not finish within {timeout_s:g} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
