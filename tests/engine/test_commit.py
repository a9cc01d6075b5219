"""The staged commit (trainkeep._internal.engine.commit.StagedCheckpoint) on the real filesystem: stage -> commit, stage -> abort,
which names may be staged, and that a staged checkpoint is committed or aborted exactly once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import trainkeep as tk
from trainkeep._internal.core.layout import (
    HISTORY_NAME,
    INTERNAL_DIR,
    MANIFEST_NAME,
    RUN_INDEX_NAME,
    intent_name,
)
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.engine.commit import StagedCheckpoint
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.errors import CheckpointExistsError, InvalidCheckpointNameError, StorageError, TrainkeepError

Snapshot = Callable[[str], dict]


def _fill(manager: tk.CheckpointManager, staged: StagedCheckpoint, tmp_path: Path, data: bytes = b"w" * 100,
          ) -> list[FileEntry]:
    """Write one file into a fresh source directory and put it into the staged directory, as a worker does."""
    src = tmp_path / f"src-{staged.name}-{len(os.listdir(tmp_path))}"
    src.mkdir()
    (src / "model.bin").write_bytes(data)
    return manager.storage.put_tree(str(src), staged.path, ["model.bin"]).entries


def _intent(run_dir: str, name: str) -> Path:
    return Path(run_dir, INTERNAL_DIR, intent_name(name))


def _history(run_dir: str) -> list[tuple[int, str | None]]:
    lines = Path(run_dir, HISTORY_NAME).read_bytes().splitlines()
    return [(row["round"], row["checkpoint"]) for row in map(json.loads, lines)]


def test_stage_then_commit_publishes_the_checkpoint(run_dir: str, tmp_path: Path) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        manager.report({"step": 0})
        staged = manager.stage("first")
        assert staged.path == os.path.join(run_dir, "first") and staged.state == "staged"
        assert Path(staged.path).is_dir() and _intent(run_dir, "first").is_file()
        assert not Path(staged.path, MANIFEST_NAME).exists()  # staged is not committed
        entries = _fill(manager, staged, tmp_path)
        checkpoint = staged.commit({"step": 1}, entries)
        assert checkpoint == tk.Checkpoint(staged.path) and staged.state == "committed"
        assert not _intent(run_dir, "first").exists()
        assert manager.latest_checkpoint == checkpoint and manager.next_round == 2
        assert manager.manifest("first").round == 1 and manager.manifest("first").metrics == {"step": 1}
    assert verify_checkpoint(LocalStorage(), run_dir, "first") == []
    assert [e["name"] for e in json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())["checkpoints"]] == ["first"]
    assert _history(run_dir) == [(0, None), (1, "first")]


def test_stage_then_abort_leaves_nothing(run_dir: str, tmp_path: Path, snapshot: Snapshot) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        before = snapshot(run_dir)
        staged = manager.stage("doomed")
        _fill(manager, staged, tmp_path)
        staged.abort()
        assert staged.state == "aborted"
        assert snapshot(run_dir) == before  # no directory, no intent record
        assert manager.next_round == 0 and manager.checkpoints == []
        again = manager.stage("doomed")  # the name is free again
        again.commit({"step": 0}, _fill(manager, again, tmp_path))
        assert [Path(c.path).name for c, _ in manager.checkpoints] == ["doomed"]


def test_a_committed_name_is_refused_before_any_write(run_dir: str, tmp_path: Path, snapshot: Snapshot) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        staged = manager.stage("taken")
        staged.commit({"step": 0}, _fill(manager, staged, tmp_path))
        before = snapshot(run_dir)
        for existing_ok in (False, True):
            with pytest.raises(CheckpointExistsError, match="'taken' is already a committed checkpoint"):
                manager.stage("taken", existing_ok=existing_ok)
        assert snapshot(run_dir) == before


def test_a_name_being_staged_is_refused(run_dir: str, tmp_path: Path, snapshot: Snapshot) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        staged = manager.stage("busy")
        before = snapshot(run_dir)
        for existing_ok in (False, True):  # even where files written in place are allowed
            with pytest.raises(CheckpointExistsError, match="'busy' is being staged"):
                manager.stage("busy", existing_ok=existing_ok)
        with pytest.raises(CheckpointExistsError, match="'busy' is being staged"):
            manager.report({"step": 0}, tk.Checkpoint.from_directory(str(tmp_path)), "busy")
        assert snapshot(run_dir) == before
        staged.commit({"step": 0}, _fill(manager, staged, tmp_path))  # the first one is unharmed
        assert verify_checkpoint(manager.storage, manager.path, "busy") == []


def test_a_foreign_directory_is_refused_unless_existing_ok(run_dir: str, tmp_path: Path) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        Path(run_dir, "in_place").mkdir()
        Path(run_dir, "in_place", "model.bin").write_bytes(b"written in place")
        with pytest.raises(CheckpointExistsError, match="already exists and is not a checkpoint"):
            manager.stage("in_place")
        assert not _intent(run_dir, "in_place").exists()
        staged = manager.stage("in_place", existing_ok=True)  # a trainer's NO_UPLOAD ranks wrote it there
        size, digest = manager.storage.checksum(os.path.join(staged.path, "model.bin"))
        staged.commit({"step": 0}, [FileEntry("model.bin", size, digest)])
    assert verify_checkpoint(LocalStorage(), run_dir, "in_place") == []


@pytest.mark.parametrize("name", ["", "a/b", "..", "trainkeep_run.json"])
def test_an_invalid_name_is_refused_before_any_write(run_dir: str, name: str, snapshot: Snapshot) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        before = snapshot(run_dir)
        with pytest.raises(InvalidCheckpointNameError, match="checkpoint_dir_name"):
            manager.stage(name)
        assert snapshot(run_dir) == before


def test_commit_after_abort_or_twice_is_refused(run_dir: str, tmp_path: Path, snapshot: Snapshot) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        aborted = manager.stage("aborted")
        entries = _fill(manager, aborted, tmp_path)
        aborted.abort()
        before = snapshot(run_dir)
        with pytest.raises(TrainkeepError, match="'aborted' .* it was aborted already"):
            aborted.commit({"step": 0}, entries)
        assert snapshot(run_dir) == before and manager.next_round == 0

        once = manager.stage("once")
        once.commit({"step": 0}, _fill(manager, once, tmp_path))
        before = snapshot(run_dir)
        with pytest.raises(TrainkeepError, match="'once' .* it was committed already"):
            once.commit({"step": 1}, [])
        once.abort()  # a committed checkpoint is never aborted: a no-op
        assert snapshot(run_dir) == before and manager.next_round == 1
        with pytest.raises(TrainkeepError, match="'never' of run .* is not staged"):
            manager.commit("never", {"step": 1}, [])


def test_manager_commit_and_abort_by_name_go_through_the_staged_checkpoint(run_dir: str, tmp_path: Path) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        first, second = manager.stage("first"), manager.stage("second")
        checkpoint = manager.commit("first", {"step": 0}, _fill(manager, first, tmp_path))
        manager.abort("second")
        manager.abort("never_staged")  # nothing of that name is staged: nothing happens
        assert first.state == "committed" and second.state == "aborted"
        assert checkpoint == manager.latest_checkpoint and not Path(second.path).exists()


class _FailingManifestStorage(LocalStorage):
    """Local storage whose manifest writes fail with EIO."""

    def write_atomic(self, path: str, data: bytes) -> None:
        if path.endswith(MANIFEST_NAME):
            raise StorageError("write", path, OSError(5, "Input/output error"))
        super().write_atomic(path, data)


def test_a_failure_before_the_manifest_aborts_the_round(run_dir: str, tmp_path: Path, snapshot: Snapshot) -> None:
    with tk.CheckpointManager(run_dir, storage=_FailingManifestStorage()) as manager:
        before = snapshot(run_dir)
        staged = manager.stage("failing")
        entries = _fill(manager, staged, tmp_path)
        with pytest.raises(StorageError, match="Input/output error"):
            staged.commit({"step": 0}, entries)
        assert staged.state == "aborted" and snapshot(run_dir) == before  # nothing new is visible
        assert manager.next_round == 0 and manager.checkpoints == []
        with pytest.raises(TrainkeepError, match="aborted already"):
            staged.commit({"step": 0}, entries)
        manager.stage("failing").abort()  # the name is free again


def test_a_closed_manager_refuses_to_stage_or_commit(run_dir: str, tmp_path: Path) -> None:
    manager = tk.CheckpointManager(run_dir)
    staged = manager.stage("late")
    entries = _fill(manager, staged, tmp_path)
    manager.close()
    with pytest.raises(TrainkeepError, match="is closed"):
        manager.stage("other")
    with pytest.raises(TrainkeepError, match="is closed"):
        staged.commit({"step": 0}, entries)
    with tk.CheckpointManager(run_dir) as reopened:  # the staged directory was debris: swept
        assert reopened.checkpoints == [] and not Path(staged.path).exists()


def test_a_commit_that_retires_a_checkpoint_writes_the_index_once_and_defers_the_run_dir_fsync(tmp_path):
    """Retention's index write is the commit's own, and the removals become durable with the next commit's
    fsync of the run directory: the retired name stays listed as retiring until then (and until close)."""
    from trainkeep.testing import FaultyStorage, is_sync

    run_dir = str(tmp_path / "run")
    storage = FaultyStorage(LocalStorage())
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"m" * 1024)
    manager = tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1), storage=storage)
    manager.report({"i": 0}, checkpoint=tk.Checkpoint.from_directory(str(src)))
    first = len(storage.ops)
    manager.report({"i": 1}, checkpoint=tk.Checkpoint.from_directory(str(src)))  # retires checkpoint_000000
    ops = storage.ops[first:]
    index_writes = [op for op in ops if op.level == "syscall" and op.name == "rename" and RUN_INDEX_NAME in op.dest]
    syncs = [op for op in ops if is_sync(op)]
    print(f"{len(syncs)} fsyncs: " + ", ".join(f"{op.name} {os.path.basename(op.path)}" for op in syncs))
    assert len(index_writes) == 1
    # intent dir, file, run dir, its dir, manifest + dir, history, index + run dir, retired dir (13 before)
    assert len(syncs) == 10
    assert syncs[-1].name == "fsync_dir" and syncs[-1].path == os.path.join(run_dir, "checkpoint_000000")
    assert not os.path.exists(os.path.join(run_dir, "checkpoint_000000"))
    assert json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())["retiring"] == ["checkpoint_000000"]
    manager.report({"i": 2}, checkpoint=tk.Checkpoint.from_directory(str(src)))  # its run-dir fsync settles it
    assert json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())["retiring"] == ["checkpoint_000001"]
    manager.close()
    assert json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())["retiring"] == []
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as reopened:
        assert [c.name for c in reopened._state.index.checkpoints] == ["checkpoint_000002"]
