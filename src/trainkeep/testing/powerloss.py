"""Power loss on a local disk: replay the system calls of a cycle on a model of a disk that forgets what was
not fsynced, and check every state a power cut could leave.

The model (the pessimistic reading of POSIX that careful storage code must assume): a file's bytes are
durable only once the file is fsynced; a directory entry (a create, rename, link, unlink, mkdir or rmdir)
only once its directory is fsynced. Until then, a power cut may keep or lose each change, independently.

For every crash point (after each recorded operation, and before the first), :func:`check_power_loss`
checks the state where everything not yet durable is lost, plus ``random_states`` states where each pending
change is kept or lost at random (a pending append may also be torn), from a printed seed. Each state is
written to a fresh directory and checked twice: against the Storage contract of each call that had
returned (``write_atomic``: the old or the new content, never a mix, the new one once it returned;
``append(durable=True)``: what it appended survives), and by opening it with the real engine
(:func:`~trainkeep.testing.check_run`).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from trainkeep._internal.storage import LocalStorage
from trainkeep.testing.cycle import Cycle, scratch_dir
from trainkeep.testing.faults import FaultyStorage, Op, is_sync
from trainkeep.testing.invariants import Expectation, check_run

Tree = dict[str, "bytes | None"]  # relative path -> file content, or None for a directory


class _Node:
    __slots__ = ("is_dir", "data", "durable", "entries", "durable_entries")

    def __init__(self, is_dir: bool, data: bytes = b"", durable: bytes = b"") -> None:
        self.is_dir = is_dir
        self.data = bytearray(data)
        self.durable = durable
        self.entries: dict[str, _Node] = {}
        self.durable_entries: dict[str, _Node] = {}


class DiskModel:
    """The files under ``root`` as a disk that loses what was not fsynced; apply recorded operations to it.

    Everything under ``root`` starts durable, except the content of the files under the ``volatile``
    directories (written by a training loop, never fsynced).
    """

    def __init__(self, root: str, volatile: Iterable[str] = ()) -> None:
        self.root_path = os.path.abspath(root)
        volatile_dirs = tuple(os.path.abspath(v) + os.sep for v in volatile)
        self.root = self._load(self.root_path, volatile_dirs)
        self._fds: dict[int, tuple[_Node, bool]] = {}  # descriptor -> (file, opened for append)
        self._offsets: dict[int, int] = {}

    def _load(self, path: str, volatile: tuple[str, ...]) -> _Node:
        node = _Node(True)
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                child = self._load(entry.path, volatile)
            else:
                with open(entry.path, "rb") as f:
                    data = f.read()
                child = _Node(False, data, b"" if entry.path.startswith(volatile) else data)
            node.entries[entry.name] = node.durable_entries[entry.name] = child
        return node

    # ------------------------------------------------------------------------------------------ replay

    def apply(self, op: Op) -> None:
        """Apply one recorded operation (calls, marks, dropped and failed system calls change nothing)."""
        if op.level != "syscall" or op.dropped or op.error:
            return
        name = op.name
        if name in ("create", "open_append"):
            parent, base = self._parent(op.path)
            node = parent.entries.get(base) if name == "open_append" else None
            if node is None:
                node = parent.entries[base] = _Node(False)
            self._fds[op.fd], self._offsets[op.fd] = (node, name == "open_append"), 0
        elif name == "write":
            node, appending = self._fds[op.fd]
            at = len(node.data) if appending else self._offsets[op.fd]
            self._write(node, at, op.data or b"")
            self._offsets[op.fd] = at + len(op.data or b"")
        elif name == "copy":
            self._write(self._fds[op.fd][0], op.offset, op.data or b"")
        elif name in ("fsync", "fsync_file"):
            node = self._fds[op.fd][0] if name == "fsync" else self._lookup(op.path)
            node.durable = bytes(node.data)
        elif name == "fsync_dir":
            directory = self._lookup(op.path)
            directory.durable_entries = dict(directory.entries)
        elif name in ("ftruncate", "truncate"):
            node = self._fds[op.fd][0] if name == "ftruncate" else self._lookup(op.path)
            del node.data[op.size:]
        else:
            self._apply_entry(op)

    def _apply_entry(self, op: Op) -> None:
        parent, base = self._parent(op.path)
        if op.name == "rename":
            target, target_base = self._parent(op.dest)
            target.entries[target_base] = parent.entries.pop(base)
        elif op.name == "link":
            target, target_base = self._parent(op.dest)
            target.entries[target_base] = parent.entries[base]
        elif op.name in ("unlink", "rmdir"):
            del parent.entries[base]
        elif op.name == "mkdir":
            parent.entries[base] = _Node(True)
        else:
            raise ValueError(f"the power-loss model does not know system call {op.name!r}")

    @staticmethod
    def _write(node: _Node, at: int, data: bytes) -> None:
        if len(node.data) < at:
            node.data.extend(b"\0" * (at - len(node.data)))
        node.data[at:at + len(data)] = data

    def _lookup(self, path: str) -> _Node:
        node = self.root
        rel = os.path.relpath(os.path.abspath(path), self.root_path)
        for part in [] if rel == "." else rel.split(os.sep):
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[_Node, str]:
        parent, base = os.path.split(os.path.abspath(path))
        return self._lookup(parent), base

    # ------------------------------------------------------------------------------------------ states

    def pending(self) -> list[tuple]:
        """Return the changes not yet durable: ("entry", directory, name) and ("content", file) keys."""
        out: list[tuple] = []
        seen: set[int] = set()

        def walk(directory: _Node) -> None:
            for base in sorted(set(directory.entries) | set(directory.durable_entries)):
                kept, current = directory.durable_entries.get(base), directory.entries.get(base)
                if kept is not current:
                    out.append(("entry", id(directory), base))
                for child in (kept, current):
                    if child is None or id(child) in seen:
                        continue
                    seen.add(id(child))
                    if child.is_dir:
                        walk(child)
                    elif bytes(child.data) != child.durable:
                        out.append(("content", id(child)))

        walk(self.root)
        return out

    def state(self, keep: Callable[[tuple], bool] | None = None, rng: random.Random | None = None) -> Tree:
        """Return what a power cut now leaves: each pending change (see :meth:`pending`) kept when ``keep``
        says so (by default none: only what is durable), or at random with ``rng`` (a pending append may
        then be torn)."""
        out: Tree = {}
        contents: dict[int, bytes] = {}

        def kept(key: tuple) -> bool:
            return rng.random() < 0.5 if rng is not None else keep is not None and keep(key)

        def content(node: _Node) -> bytes:
            if id(node) not in contents:
                data, durable = bytes(node.data), node.durable
                if data == durable or not kept(("content", id(node))):
                    contents[id(node)] = durable
                elif rng is not None and data.startswith(durable) and rng.random() < 0.5:
                    contents[id(node)] = data[: rng.randint(len(durable), len(data))]  # a torn append
                else:
                    contents[id(node)] = data
            return contents[id(node)]

        def walk(directory: _Node, prefix: str) -> None:
            for base in sorted(set(directory.entries) | set(directory.durable_entries)):
                durable, current = directory.durable_entries.get(base), directory.entries.get(base)
                child = current if durable is not current and kept(("entry", id(directory), base)) else durable
                if child is None:
                    continue
                out[prefix + base] = None if child.is_dir else content(child)
                if child.is_dir:
                    walk(child, prefix + base + "/")

        walk(self.root, "")
        return out

    def states(self, rng: random.Random, random_states: int) -> list[Tree]:
        """Return the states a power cut now may leave, as checked: everything pending lost; everything kept
        (what a killed process leaves); everything kept but one change, for each pending one (a later change
        survives an earlier one); and ``random_states`` random mixes."""
        pending = self.pending()
        trees = [self.state(), self.state(lambda key: True)]
        trees += [self.state(lambda key, lost=item: key != lost) for item in pending]  # type: ignore[misc]
        trees += [self.state(rng=rng) for _ in range(random_states if pending else 0)]
        return trees


def materialise(tree: Tree, dest: str) -> None:
    """Write ``tree`` under the new directory ``dest``."""
    os.makedirs(dest)
    for rel, data in sorted(tree.items()):
        path = os.path.join(dest, rel)
        if data is None:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


def contract_violations(tree: Tree, ops: list[Op], done: int, root: str, initial: Tree) -> list[str]:
    """Return how ``tree`` breaks what the Storage calls among ``ops`` that had started by operation ``done``
    promised (see the module docstring); paths are relative to ``root``, ``initial`` is the state before."""
    allowed: dict[str, set[bytes | None]] = {}
    appended: dict[str, bytes] = {}
    durable_logs: dict[str, bytes] = {}
    for op in ops:
        if op.level != "call" or op.index > done:
            continue
        rel = os.path.relpath(op.path, root)
        returned = op.returned_at is not None and op.returned_at <= done and not op.error
        if op.name == "write_atomic":
            choices = allowed.setdefault(rel, {initial.get(rel)})
            if returned:
                choices.clear()
            choices.add(op.data)
        elif op.name in ("delete_file", "delete_tree"):
            for path, choices in allowed.items():
                if path == rel or path.startswith(rel + "/"):
                    choices.add(None)
        elif op.name == "append":
            appended[rel] = appended.get(rel, initial.get(rel) or b"") + (op.data or b"")
            if returned and op.size:  # size holds `durable`
                durable_logs[rel] = appended[rel]
    out = []
    for rel, choices in sorted(allowed.items()):
        if tree.get(rel) not in choices:
            out.append(f"write_atomic promised {rel} holds one of {len(choices)} contents written whole "
                       f"(or none), found {_describe(tree.get(rel))}")
    for rel, log in sorted(durable_logs.items()):
        if not (tree.get(rel) or b"").startswith(log):
            out.append(f"append(durable=True) returned, yet {rel} lost what it appended "
                       f"({len(tree.get(rel) or b'')} bytes left of {len(log)})")
    return out


def _describe(data: bytes | None) -> str:
    return "no file" if data is None else f"{len(data)} bytes {data[:40]!r}"


@dataclass
class PowerLossReport:
    """What :func:`check_power_loss` checked and found.

    Attributes:
        ops: the recorded operations of the cycle.
        crash_points: how many points were crashed at; states: how many distinct states were checked.
        violations: (operations done, description) of each broken promise.
    """

    ops: list[Op]
    crash_points: int = 0
    states: int = 0
    violations: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        return (f"{self.crash_points} crash points, {self.states} states checked, {len(self.violations)} "
                f"violations, {self.seconds:.1f} s")


def check_power_loss(cycle: Cycle, *, seed: int, random_states: int = 3, drop_syncs: Iterable[int] = (),
                     first_violation: bool = False) -> PowerLossReport:
    """Run ``cycle`` on the local disk, then check every state a power cut could leave at each crash point.

    Args:
        seed: the seed of the random states (print it: the same seed replays the same states).
        random_states: random states per crash point, besides the one where everything pending is lost.
        drop_syncs: skip these fsyncs (1-based, among the cycle's fsyncs of files and directories), to show
            that the check notices a missing one.
        first_violation: stop at the first violation.
    """
    started, base = time.monotonic(), scratch_dir("trainkeep-powerloss-")
    try:
        run, scratch = os.path.join(base, "run"), os.path.join(base, "scratch")
        cycle.prepare(LocalStorage(), run, scratch)
        src = cycle.source(scratch)
        model = DiskModel(base, volatile=[src])
        faulty = FaultyStorage(LocalStorage(), record_data=True)
        for i in drop_syncs:
            faulty.drop_sync(i)
        cycle.run(faulty, run, src)
        report = PowerLossReport(faulty.ops)
        _explore(cycle, model, faulty.ops, base, report, seed, random_states, first_violation)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def _explore(cycle: Cycle, model: DiskModel, ops: list[Op], base: str, report: PowerLossReport, seed: int,
             random_states: int, first_violation: bool) -> None:
    initial = model.state()
    marks = [op for op in ops if op.level == "mark"]
    start = min((op.index for op in ops if op.dropped), default=0)  # before a dropped fsync nothing differs
    checked: set[tuple] = set()
    for crash_after in [None] + [op for op in ops if op.level != "mark"]:
        if crash_after is not None:
            model.apply(crash_after)
        done = crash_after.index if crash_after is not None else 0
        if done < start:
            continue
        report.crash_points += 1
        expect = cycle.expectation(marks, done)
        trees = model.states(random.Random(f"{seed}:{done}"), random_states)
        for tree in trees:  # the cheap check first: with first_violation, it often ends the search
            report.violations.extend((done, v) for v in contract_violations(tree, ops, done, base, initial))
        for tree in trees:
            if first_violation and report.violations:
                return
            key = (frozenset(tree.items()), expect.durable, expect.durable_rows)
            if key not in checked:
                checked.add(key)
                report.states += 1
                report.violations.extend((done, v) for v in _engine_violations(tree, expect))


def _engine_violations(tree: Tree, expect: Expectation) -> list[str]:
    state_dir = scratch_dir("trainkeep-state-")
    try:
        shutil.rmtree(state_dir)
        materialise(tree, state_dir)
        run = os.path.join(state_dir, "run")
        if not os.path.isdir(run):
            return []  # the run directory itself was not durable yet: nothing was promised
        return check_run(LocalStorage(), run, expect).violations
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def sync_sites(ops: list[Op]) -> dict[tuple[str, ...], list[int]]:
    """Group the fsyncs of a recorded cycle by their call site: {site: [1-based fsync numbers]}."""
    sites: dict[tuple[str, ...], list[int]] = {}
    for number, op in enumerate((op for op in ops if is_sync(op)), start=1):
        sites.setdefault(op.site, []).append(number)
    return sites
