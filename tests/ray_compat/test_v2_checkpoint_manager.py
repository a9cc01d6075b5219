"""Port of ray-project/ray python/ray/train/v2/tests/test_checkpoint_manager.py (Ray 2.60), imports swapped.

Ray drives its internal CheckpointManager with dummy training results; here the same behaviour goes through
trainkeep's public API: ``trainkeep.CheckpointManager`` (the manager-level API) for the saved state, and a
trainer for what workers start from and for checkpoints pending validation. Two differences are pinned in
test_v2_differences.py: a second manager cannot open a run another one holds (Ray builds one alongside the
live one to compare), and a garbled run index is rebuilt from the manifests instead of raising.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    CheckpointManager,
    DataParallelTrainer,
    ReportedCheckpointStatus,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    ValidationTaskConfig,
)


def dummy_checkpoint(directory: Path, score: int) -> Checkpoint:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data.json").write_text(json.dumps({"score": score}))
    return Checkpoint.from_directory(directory)


def state_of(manager: CheckpointManager) -> tuple:
    """What Ray compares between the live manager and one loaded from storage."""
    best = [(c.path, c.filesystem.protocol, m) for c, m in manager.best_checkpoints]
    return manager.config, manager.latest_checkpoint, best, manager.next_round


@pytest.mark.parametrize("checkpoint_config", [
    CheckpointConfig(),
    CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="max"),
], ids=["default", "keep1-max"])
def test_save_load_state_equivalence(tmp_path, checkpoint_config):
    """Covers test_save_load_state_equivalence: after each report, a manager opened on the same storage has the
    same config, latest, best and report index as the live one."""
    run_path = str(tmp_path / f"checkpoint_manager_test-{uuid.uuid4().hex}")
    manager = CheckpointManager(run_path, checkpoint_config)
    try:
        for i in range(3):
            manager.report({"score": i}, dummy_checkpoint(tmp_path / f"src_{i}", i))
            assert manager.next_round == i + 1
            live = state_of(manager)
            manager.close()
            manager = CheckpointManager(run_path, checkpoint_config)
            assert state_of(manager) == live
    finally:
        manager.close()


def test_before_init_train_context(tmp_path):
    """Covers test_before_init_train_context: every worker starts from nothing on a fresh run, and from the
    latest checkpoint (with the report index going on) once one was reported."""

    def train_fn(config):
        checkpoint = train.get_checkpoint()
        name = checkpoint.path.rsplit("/", 1)[-1] if checkpoint else None
        started = train.collective.broadcast_from_rank_zero(None)  # every rank passes this point together
        assert started is None
        with tempfile.TemporaryDirectory() as d:
            Path(d, f"rank_{train.get_context().get_world_rank()}").write_text(str(name))
            train.report({"started_from": str(name)}, checkpoint=Checkpoint.from_directory(d))

    run_config = RunConfig(name="my_experiment_name", storage_path=str(tmp_path))
    for expected_start, expected_round in [(None, 0), ("checkpoint_000000", 1)]:
        result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=4),
                                     run_config=run_config).fit()
        assert result.metrics == {"started_from": str(expected_start)}
        with result.checkpoint.as_directory() as d:
            assert {Path(d, f"rank_{r}").read_text() for r in range(4)} == {str(expected_start)}
        assert result.checkpoint.path.endswith(f"checkpoint_{expected_round:06d}")


def validate_after_signal(checkpoint, signal_file, score):
    while not os.path.exists(signal_file):
        time.sleep(0.02)
    return {"score": score}


def test_pending_checkpoint_management(tmp_path):
    """Covers test_pending_checkpoint_management: with num_to_keep=1, checkpoints pending validation are kept
    beside the best; once validated, retention keeps only the best of all."""

    def train_fn(config):
        signal_file = config["signal"]
        for score, validate_to in [(0, 100), (2, None), (1, 200)]:  # A pending, C final, B pending
            with tempfile.TemporaryDirectory() as d:
                validation = (ValidationTaskConfig(fn_kwargs={"signal_file": signal_file, "score": validate_to})
                              if validate_to is not None else False)
                train.report({"score": score}, checkpoint=dummy_checkpoint(Path(d), score), validation=validation)
        committed = train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        assert [(c.metrics, c.status) for c in committed] == [
            ({"score": 0}, ReportedCheckpointStatus.PENDING_VALIDATION),
            ({"score": 1}, ReportedCheckpointStatus.PENDING_VALIDATION),
            ({"score": 2}, ReportedCheckpointStatus.COMMITTED),
        ]
        Path(signal_file).touch()
        validated = train.get_all_reported_checkpoints(timeout_s=60)
        assert [(c.metrics, c.status) for c in validated] == [({"score": 200}, ReportedCheckpointStatus.VALIDATED)]

    result = DataParallelTrainer(
        train_fn, train_loop_config={"signal": str(tmp_path / "signal")},
        validation_config=ValidationConfig(validate_after_signal),
        run_config=RunConfig(name="run", storage_path=str(tmp_path / "storage"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score",
                                                                checkpoint_score_order="max")),
    ).fit()
    assert [m for _, m in result.best_checkpoints] == [{"score": 200}]
    on_storage = sorted(p.name for p in Path(result.path).iterdir() if p.name.startswith("checkpoint_"))
    assert on_storage == ["checkpoint_000002"]
