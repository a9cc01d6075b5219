"""Full disks and I/O errors: a report that cannot be written fails with a typed error and breaks nothing.

DESIGN §5 promise 6, in four settings: (a) a real ENOSPC from a 4 MiB tmpfs mounted in a private mount
namespace, filled to leave 0, 1, 2, ... pages; (b) a real EFBIG from RLIMIT_FSIZE in a child (SIGXFSZ
ignored); (c) FaultyStorage failing the k-th write of a report for every k, with ENOSPC, EIO and EACCES in
turn, at the level of system calls on the local disk (whole and half-done writes) and of Storage calls in
memory; (d) a failing or killed ASYNC upload inside a trainer's worker process, injected through the
trainer's storage wrapper (trainkeep.testing.injection). Each time: the error is a StorageError naming the path and the errno, every
earlier checkpoint still verifies, retention did not run, nothing new is visible unless it is whole, a
failed fsync is not retried, and once the fault is gone the next report succeeds with no manual step.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import fault_loops  # tests/faults is on sys.path (pytest puts it there), and the workers get that path
import pytest

import trainkeep as tk
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.errors import StorageError
from trainkeep.testing import Expectation, check_run, is_call_write, is_syscall_write
from trainkeep.testing.injection import Faults, inject
from trainkeep.testing.ioerrors import check_io_errors

HERE = Path(__file__).resolve().parent


def _enospc_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs in a private mount namespace needs root"
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this machine does not permit a private tmpfs mount: {probe.stderr.strip()}"
    return None


def test_a_real_full_disk_fails_each_report_cleanly_until_there_is_room(tmp_path: Path) -> None:
    reason = _enospc_unavailable()
    if reason:
        pytest.skip(reason)
    disk, sources = tmp_path / "disk", tmp_path / "sources"
    disk.mkdir()
    sources.mkdir()
    script = 'mount -t tmpfs -o size=4m tmpfs "$1" && exec "$2" "$3" "$1" "$4"'
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                           str(disk), sys.executable, str(HERE / "enospc_child.py"), str(sources)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outcomes = result["outcomes"]
    for o in outcomes:
        print(f"{o['free']:6d} bytes free: {'fit' if o['fit'] else o['op']} {o.get('error', '')[:100]}")
    assert [o for o in outcomes if o["violations"]] == []
    assert result["final"] == []
    assert outcomes[-1]["fit"] and not any(o["fit"] for o in outcomes[:-1])
    failed_at = {o["op"].split()[0] for o in outcomes if not o["fit"]}
    assert {"write", "copy"} <= failed_at, failed_at  # our own files and the checkpoint's files both ran out
    print(f"errors injected: {len(outcomes) - 1} real ENOSPC")


def _efbig_body(run: str, scratch: str) -> dict[str, Any]:
    """In a child: commit a small checkpoint, hit RLIMIT_FSIZE with a big one, lift the limit, commit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    manager = tk.CheckpointManager(run, tk.CheckpointConfig(num_to_keep=1))
    small, big = os.path.join(scratch, "small"), os.path.join(scratch, "big")
    for path, size in ((small, 1000), (big, 300_000)):
        os.makedirs(path)
        with open(os.path.join(path, "model.bin"), "wb") as f:
            f.write(b"x" * size)
    manager.report({"step": 0}, tk.Checkpoint.from_directory(small))
    resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, hard))
    try:
        manager.report({"step": 1}, tk.Checkpoint.from_directory(big))
        error: dict[str, Any] = {}
    except StorageError as exc:
        error = {"errno": exc.errno, "path": exc.path, "text": str(exc)}
    left = sorted(os.listdir(run))
    intact = verify_checkpoint(LocalStorage(), run, "checkpoint_000000") == []
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    retried = os.path.basename(manager.report({"step": 1}, tk.Checkpoint.from_directory(big)).path)  # type: ignore
    manager.close()
    return {"error": error, "left": left, "intact": intact, "retried": retried}


def test_a_file_size_limit_fails_the_report_with_efbig_and_the_next_one_succeeds(tmp_path: Path, in_child) -> None:
    run = str(tmp_path / "run")
    result = in_child(lambda: _efbig_body(run, str(tmp_path)))
    print(f"errors injected: 1 real EFBIG: {result['error'].get('text')}")
    assert result["error"]["errno"] == errno.EFBIG
    assert "EFBIG" in result["error"]["text"] and result["error"]["path"] in result["error"]["text"]
    assert result["error"]["path"].startswith(run)
    assert result["left"] == [".trainkeep", "checkpoint_000000", "history.jsonl", "trainkeep_run.json"]
    assert result["intact"]  # retention did not run: the only kept checkpoint is still there and whole
    assert result["retried"] == "checkpoint_000001"
    report = check_run(LocalStorage(), run, Expectation(tk.CheckpointConfig(num_to_keep=1), ("checkpoint_000000",),
                                                         frozenset({"checkpoint_000000"}), ("checkpoint_000001",),
                                                         frozenset({"checkpoint_000001"}), rows=None))
    assert report.violations == [] and report.committed == ["checkpoint_000001"]


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "half-written"])
def test_every_failing_write_on_local_disk(partial: bool, local_root: str, scratch: str) -> None:
    report = check_io_errors(LocalStorage, local_root, scratch=scratch, among=is_syscall_write, partial=partial)
    print(f"errors injected: {report.describe()}")
    assert {o.op.split()[2] for o in report.outcomes} >= {"create", "write", "copy", "fsync", "fsync_dir", "rename"}
    assert any(o.committed and o.raised for o in report.outcomes)  # errors after the commit point were raised too
    report.assert_ok()


def test_every_failing_write_in_memory(memory_storage, scratch: str) -> None:
    make_storage, root = memory_storage
    report = check_io_errors(make_storage, root, scratch=scratch, among=is_call_write)
    print(f"errors injected: {report.describe()}")
    report.assert_ok()


class _SwallowingStorage(LocalStorage):
    """A broken storage: a failed directory fsync is logged and forgotten."""

    def sync_dir(self, path: str) -> None:
        try:
            super().sync_dir(path)
        except OSError:
            pass


def test_a_storage_that_swallows_an_error_fails_the_check(local_root: str, scratch: str) -> None:
    report = check_io_errors(_SwallowingStorage, local_root, scratch=scratch,
                             among=lambda op: op.level == "syscall" and op.name == "fsync_dir")
    print(f"errors injected: {report.describe()}")
    assert any("swallowed" in v for o in report.outcomes for v in o.violations), report.outcomes
    with pytest.raises(AssertionError, match="swallowed"):
        report.assert_ok()


# ---------------------------------------------------------------------------------------------- inside a trainer


def _fit(tmp_path: Path, epochs: int = 3, faults: Faults | None = None) -> tk.Result:
    (tmp_path / "src").mkdir(exist_ok=True)
    trainer = tk.DataParallelTrainer(
        fault_loops.train,
        train_loop_config={"epochs": epochs, "tmp": str(tmp_path / "src")},
        scaling_config=tk.ScalingConfig(num_workers=1),
        run_config=tk.RunConfig(name="run", storage_path=str(tmp_path),
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=1)))
    return (inject(trainer, faults) if faults is not None else trainer).fit()


def _faults(tmp_path: Path, **plan: Any) -> Faults:
    return Faults(role="worker", once=str(tmp_path / "fired"), **plan)


def _check_resumed(tmp_path: Path, result: tk.Result) -> None:
    assert result.error is None and result.return_value == 2
    assert [m["epoch"] for m in result.metrics_dataframe.to_dict("records")] == [0, 1, 2]
    run = str(tmp_path / "run")
    expect = Expectation(tk.CheckpointConfig(num_to_keep=1), new=tuple(f"checkpoint_{i:06d}" for i in range(3)),
                         durable=frozenset({"checkpoint_000002"}), rows=None)
    assert check_run(LocalStorage(), run, expect).violations == []


def test_an_async_upload_failing_in_the_worker_fails_the_run_typed_and_the_next_fit_resumes(
        tmp_path: Path) -> None:
    # each upload moves one file: link, unlink, fsync: the 6th write is the fsync of epoch 1's file
    faults = _faults(tmp_path, fail_at=6, errno=errno.EIO, among="syscall_write")
    with pytest.raises(tk.TrainingFailedError) as info:
        _fit(tmp_path, faults=faults)
    cause = info.value.worker_failures[0]
    print(f"errors injected: 1 EIO in a worker's ASYNC upload: {cause}")
    assert isinstance(cause, StorageError) and cause.errno == errno.EIO
    assert str(tmp_path / "run" / "checkpoint_000001") in str(cause)
    assert verify_checkpoint(LocalStorage(), str(tmp_path / "run"), "checkpoint_000000") == []
    assert not (tmp_path / "run" / "checkpoint_000001").exists()  # the failed round was swept whole
    _check_resumed(tmp_path, _fit(tmp_path))


def test_a_job_killed_inside_an_async_upload_resumes_from_its_last_commit(tmp_path: Path) -> None:
    # worker operations per upload: put_tree, link, unlink, fsync_file; the 7th is the unlink in epoch 1's.
    # Epoch 0 may or may not be committed by then: an ASYNC report promises nothing durable when it returns.
    faults = _faults(tmp_path, kill_before=7)
    pid = os.fork()
    if pid == 0:  # the driver of this fit is killed by its worker, with the whole job
        try:
            _fit(tmp_path, faults=faults)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    run = str(tmp_path / "run")
    expect = Expectation(tk.CheckpointConfig(num_to_keep=1), new=("checkpoint_000000", "checkpoint_000001"),
                         rows=None)
    report = check_run(LocalStorage(), run, expect)
    print(f"crash points covered: 1 SIGKILL of driver and worker inside an ASYNC upload; {report}")
    assert report.violations == [] and report.committed in ([], ["checkpoint_000000"])
    _check_resumed(tmp_path, _fit(tmp_path))
