"""Every crash point of one report-commit-prune cycle, on the local disk, in memory and on S3.

A cycle (trainkeep.testing.Cycle) opens a run, records a metrics-only round, reports one checkpoint, records
another round and closes. An uninterrupted run through a recording FaultyStorage counts its operations, n:
every Storage call and, on the local disk, every system call that changes the disk (create, write, copy,
fsync, rename, link, unlink, mkdir, rmdir, directory fsync). Then for every k in 1..n the cycle runs again on
a fresh copy of the same starting run and dies right before operation k, and the run is reopened and checked
against DESIGN §5 (trainkeep.testing.check_run): a checkpoint exists iff its manifest is valid, everything
committed before verifies, the index names nothing missing, no debris after the reopen, the new checkpoint is
whole or invisible (and present once its report returned), history rows are a correct prefix, and
retention deleted only what it decided.

How the cycle dies: on the local disk and on S3 (moto server), a forked child SIGKILLs itself
(``os.kill(os.getpid(), SIGKILL)``) right before operation k. ``memory://`` lives inside one process, so a
killed child would take the store with it: there the crash is in-process, a SimulatedCrash (a BaseException
no ``except Exception`` can catch) raised at operation k and at every operation after it, after which the
manager object is dropped without closing and only its lease is let go, as a dead holder's would be.

Scenarios: the first checkpoint of a run, and one that makes retention delete (num_to_keep=1 with an earlier
checkpoint present); SYNC (CheckpointManager.report) everywhere, and ASYNC (the trainer's path: the files
handed over to a background uploader, moved, then committed) on the local disk and in memory. Last, a real
DataParallelTrainer's ASYNC uploads, killed (driver and worker) at every operation of the worker in turn.
Then pinned points a cycle cannot reach: a child process dies at one named step (a reused checkpoint name, the
index's ``retiring`` list inside retention).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import trainkeep as tk
from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import HISTORY_NAME, INTERNAL_DIR, MANIFEST_NAME, RUN_INDEX_NAME
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage, Storage
from trainkeep._internal.storage.local import write_all
from trainkeep.testing import CrashPointReport, Cycle, Expectation, check_crash_points, check_run
from trainkeep.testing.injection import Faults, inject

SCENARIOS = {
    "first": Cycle(),
    "deleting": Cycle(CheckpointConfig(num_to_keep=1), earlier=1),
}


def _assert_every_point_holds(report: CrashPointReport) -> None:
    print(f"crash points covered: {report.describe()}")
    assert report.tried == list(range(1, report.operations + 1))
    report.assert_ok()


@pytest.mark.parametrize("upload", ["sync", "async"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_crash_point_on_local_disk(scenario: str, upload: str, local_root: str, scratch: str) -> None:
    cycle = replace(SCENARIOS[scenario], upload=upload)
    report = check_crash_points(LocalStorage, local_root, cycle, scratch=scratch)
    assert any(op.level == "syscall" and op.name == "fsync_dir" for op in report.ops)  # syscalls are counted
    if upload == "async":
        assert any(op.name == "link" for op in report.ops)  # the files were handed over, not copied
    if scenario == "deleting":
        assert any(op.name == "delete_tree" for op in report.ops)
    _assert_every_point_holds(report)


@pytest.mark.parametrize("upload", ["sync", "async"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_crash_point_in_memory(scenario: str, upload: str, memory_storage, scratch: str) -> None:
    make_storage, root = memory_storage
    report = check_crash_points(make_storage, root, replace(SCENARIOS[scenario], upload=upload), scratch=scratch,
                                in_process=True)
    _assert_every_point_holds(report)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_crash_point_on_s3(scenario: str, s3_storage, scratch: str) -> None:
    make_storage, root = s3_storage
    report = check_crash_points(make_storage, root, SCENARIOS[scenario], scratch=scratch, timeout_s=60)
    _assert_every_point_holds(report)


# ---------------------------------------------------------------------------------------------- the check can fail


class _InPlaceStorage(LocalStorage):
    """A broken storage: write_atomic writes over the file in place, in two halves, without a temp file."""

    def write_atomic(self, path: str, data: bytes) -> None:
        sc = self.syscalls
        if os.path.exists(path):
            sc.unlink(path)
        fd = sc.create(path)
        try:
            write_all(fd, data[: len(data) // 2], sc)
            write_all(fd, data[len(data) // 2:], sc)
            sc.fsync(fd)
        finally:
            sc.close(fd)
        self.sync_dir(os.path.dirname(path))


class _ManifestLastStorage(LocalStorage):
    """A broken storage: deleting a checkpoint's manifest is put off until its other files are gone."""

    def delete_file(self, path: str) -> None:
        if not path.endswith(MANIFEST_NAME):
            super().delete_file(path)

    def delete_tree(self, path: str) -> None:
        for root, _, files in os.walk(path):
            for name in sorted(files):
                if name != MANIFEST_NAME:
                    self.syscalls.unlink(os.path.join(root, name))
        super().delete_tree(path)


@pytest.mark.parametrize("broken, expected", [
    (_InPlaceStorage, "invalid manifest"),
    (_ManifestLastStorage, "valid manifest but does not verify"),
], ids=["write-in-place", "manifest-deleted-last"])
def test_a_storage_that_breaks_the_protocol_fails_the_check(broken: Callable[[], Storage], expected: str,
                                                             local_root: str, scratch: str) -> None:
    report = check_crash_points(broken, local_root, SCENARIOS["deleting"], scratch=scratch, in_process=True)
    print(f"crash points covered: {report.describe()}")
    assert report.violations, "a storage that breaks the commit protocol passed every crash point"
    assert any(expected in v for vs in report.violations.values() for v in vs), report.violations
    with pytest.raises(AssertionError, match="crash point"):
        report.assert_ok()


# ---------------------------------------------------------------------------------------------- inside a trainer


def test_every_crash_point_of_a_trainer_worker_s_async_uploads(tmp_path) -> None:
    """The real ASYNC path: a DataParallelTrainer whose worker moves each epoch's file into the run from its
    background uploader. The trainer's storage wrapper (trainkeep.testing.injection) wraps the worker's storage;
    at every one of its operations in turn the worker SIGKILLs its driver and itself (the whole job dies), and
    the run must check clean."""
    import fault_loops

    def fit(name: str, faults: Faults) -> None:
        (tmp_path / "src").mkdir(exist_ok=True)
        trainer = tk.DataParallelTrainer(
            fault_loops.train, train_loop_config={"epochs": 2, "tmp": str(tmp_path / "src")},
            run_config=tk.RunConfig(name=name, storage_path=str(tmp_path),
                                    checkpoint_config=CheckpointConfig(num_to_keep=1)))
        inject(trainer, faults).fit()

    fit("count", Faults(role="worker", log=str(tmp_path / "ops.log")))
    n = len((tmp_path / "ops.log").read_text().splitlines())
    assert n == 8  # per epoch: put_tree, link, unlink, fsync of the moved file
    tried = []
    for k in range(1, n + 1):
        faults = Faults(role="worker", kill_before=k, once=str(tmp_path / f"fired-{k}"))
        pid = os.fork()
        if pid == 0:
            try:
                fit(f"k{k}", faults)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"k={k}: status {status}"
        expect = Expectation(CheckpointConfig(num_to_keep=1), new=("checkpoint_000000", "checkpoint_000001"),
                             rows=None)
        assert check_run(LocalStorage(), str(tmp_path / f"k{k}"), expect).violations == [], f"k={k}"
        tried.append(k)
    print(f"crash points covered: {len(tried)} of {n} worker operations of a trainer's ASYNC uploads")
    assert tried == list(range(1, n + 1))


# ---------------------------------------------------------------------------------------------- pinned points
# A real child process dies (``os._exit``) at one named step of the commit or retention protocol, where the
# cycle above cannot go: a name reused after retention deleted its checkpoint (within one open of the run), and
# the exact state of the index's ``retiring`` list at a death inside retention.

DIED = 77

_CHILD = textwrap.dedent("""
    import json, os, sys, tempfile
    import trainkeep as tk
    from trainkeep._internal.storage import LocalStorage

    run_dir, plan = sys.argv[1], json.loads(sys.argv[2])
    seen = {}

    class DyingStorage(LocalStorage):
        # Dies before the operation `plan["die"]` once `plan["after"]` has happened `plan["after_n"]` times.
        def _step(self, op, path):
            key = op + ":" + os.path.basename(path)
            if key == plan["die"] and seen.get(plan["after"], 0) >= plan["after_n"]:
                os._exit(plan["exit_code"])
            seen[key] = seen.get(key, 0) + 1

        def write_atomic(self, path, data):
            self._step("write", path)
            super().write_atomic(path, data)

        def delete_file(self, path):
            self._step("delete_file", path)
            super().delete_file(path)

        def delete_tree(self, path):
            self._step("delete_tree", path)
            super().delete_tree(path)

    config = tk.CheckpointConfig(**plan["config"])
    manager = tk.CheckpointManager(run_dir, config, storage=DyingStorage())
    for report in plan["reports"]:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.bin"), "wb") as f:
                f.write(json.dumps(report["metrics"]).encode() * 100)
            manager.report(report["metrics"], tk.Checkpoint.from_directory(d), report.get("name"))
    manager.close()
""")


def _run_child(run_dir: str, reports: list[dict[str, Any]], die: str, after: str = "", after_n: int = 0,
               config: dict[str, Any] | None = None) -> int:
    plan = {"reports": reports, "die": die, "after": after, "after_n": after_n, "config": config or {},
            "exit_code": DIED}
    done = subprocess.run([sys.executable, "-c", _CHILD, run_dir, json.dumps(plan)], timeout=120,
                          capture_output=True, text=True)
    assert done.returncode in (0, DIED), done.stderr
    return done.returncode


def _assert_consistent(run_dir: str, manager: tk.CheckpointManager) -> list[str]:
    """Check index == valid manifests on storage, no debris, every kept checkpoint verifies; return the names."""
    names = [Path(c.path).name for c, _ in manager.checkpoints]
    present = sorted(n for n in os.listdir(run_dir) if Path(run_dir, n).is_dir() and n != INTERNAL_DIR)
    assert present == sorted(names), "a directory without a valid manifest survived the reopen"
    assert os.listdir(Path(run_dir, INTERNAL_DIR)) == ["lock"]
    for name in names:
        assert verify_checkpoint(LocalStorage(), run_dir, name) == []
    rounds = [json.loads(line)["round"] for line in Path(run_dir, HISTORY_NAME).read_bytes().splitlines()]
    assert rounds == list(range(manager.next_round))
    return names


def _reports(*names: str | None) -> list[dict[str, Any]]:
    return [{"metrics": {"epoch": i, "loss": 10.0 - i}, "name": name} for i, name in enumerate(names)]


@pytest.mark.parametrize("die", [f"delete_file:{MANIFEST_NAME}", "delete_tree:checkpoint_000000"])
def test_death_inside_retention_finishes_the_delete_on_reopen(run_dir: str, die: str) -> None:
    code = _run_child(run_dir, _reports(None, None), die=die, config={"num_to_keep": 1})
    assert code == DIED
    index = json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())
    assert index["retiring"] == ["checkpoint_000000"]  # the index let go of it before any file was deleted
    assert [e["name"] for e in index["checkpoints"]] == ["checkpoint_000001"]
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert _assert_consistent(run_dir, manager) == ["checkpoint_000001"]
    assert json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())["retiring"] == []


def test_a_reused_name_of_a_deleted_checkpoint_survives_a_crash_before_the_index(run_dir: str) -> None:
    # "a" is committed, deleted by retention (the index lists it as retiring), then committed again under the
    # same name; the process dies right after the new manifest. The new "a" must not be taken for the old one.
    code = _run_child(run_dir, _reports("a", "b", "a"), die=f"write:{RUN_INDEX_NAME}",
                      after=f"write:{MANIFEST_NAME}", after_n=3, config={"num_to_keep": 1})
    assert code == DIED
    assert Path(run_dir, "a", MANIFEST_NAME).is_file()
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        names = _assert_consistent(run_dir, manager)
        assert names == ["b", "a"]
        assert manager.checkpoints[-1][1] == {"epoch": 2, "loss": 8.0}
        resume = manager.resume_checkpoint()
        assert resume is not None and Path(resume.path).name == "a"
