"""Port of ray-project/ray python/ray/train/v2/tests/test_async_checkpointing_validation.py (Ray 2.60), imports
swapped, with Ray 2.60's validation API: ``DataParallelTrainer(validation_config=ValidationConfig(fn))`` and
``report(..., validation=ValidationTaskConfig(fn_kwargs=...))``.

The upload-mode tests this file shares with test_async_checkpointing.py (mixed modes, deleting the local copy,
a failing upload, ``checkpoint_upload_fn``, ``get_all_reported_checkpoints`` counts) are ported once, in
test_v2_async_checkpointing.py and test_v2_data_parallel_trainer.py. Ray's signal actor is a file here.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    CheckpointUploadMode,
    DataParallelTrainer,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    ValidationTaskConfig,
    WorkerGroupError,
)


def dict_checkpoint(directory: str) -> Checkpoint:
    Path(directory, "data.json").write_text(json.dumps({}))
    return Checkpoint.from_directory(directory)


def validate_with_new_score(checkpoint, new_score=None):
    return {"score": new_score} if new_score else {}


def test_report_validate_fn_keeps_correct_checkpoints(tmp_path):
    """Covers test_report_validate_fn_keeps_correct_checkpoints: a validated score replaces the reported one."""

    def train_fn(config):
        rank = train.get_context().get_world_rank()
        checkpoint_dir = os.path.join(config["tmp"], "my_checkpoint_dir")
        os.makedirs(checkpoint_dir, exist_ok=True)
        Path(checkpoint_dir, f"shard_{rank}").write_bytes(pickle.dumps("some_checkpoint_contents"))
        train.report(metrics={"score": 1}, checkpoint=Checkpoint(checkpoint_dir),
                     checkpoint_upload_mode=CheckpointUploadMode.ASYNC, delete_local_checkpoint_after_upload=False,
                     validation=ValidationTaskConfig(fn_kwargs={}))
        with tempfile.TemporaryDirectory() as d:
            train.report(metrics={"score": 3}, checkpoint=dict_checkpoint(d),
                         checkpoint_upload_mode=CheckpointUploadMode.SYNC, validation=ValidationTaskConfig(fn_kwargs={}))
        with tempfile.TemporaryDirectory() as d:
            train.report(metrics={"score": 2}, checkpoint=dict_checkpoint(d),
                         checkpoint_upload_mode=CheckpointUploadMode.SYNC,
                         validation=ValidationTaskConfig(fn_kwargs={"new_score": 5}))

    result = DataParallelTrainer(
        train_fn, train_loop_config={"tmp": str(tmp_path)},
        validation_config=ValidationConfig(validate_with_new_score),
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(storage_path=str(tmp_path / "storage"),
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="score")),
    ).fit()
    assert result.error is None
    assert result.checkpoint == result.best_checkpoints[1][0]
    assert len(result.best_checkpoints) == 2
    assert result.best_checkpoints[0][1] == {"score": 3}
    assert result.best_checkpoints[1][1] == {"score": 5}


def validate_failing_for_rank_0_iteration_0(checkpoint, rank=None, iteration=None):
    if rank == 0 and iteration == 0:
        raise ValueError("validation failed")
    return {}


def test_report_validate_fn_error(tmp_path):
    """Covers test_report_validate_fn_error: a validation that raises does not fail the run."""

    def train_fn():
        rank = train.get_context().get_world_rank()
        for iteration in range(2):
            with tempfile.TemporaryDirectory() as d:
                train.report(metrics={}, checkpoint=dict_checkpoint(d),
                             validation=ValidationTaskConfig(fn_kwargs={"rank": rank, "iteration": iteration}))

    result = DataParallelTrainer(train_fn, validation_config=ValidationConfig(validate_failing_for_rank_0_iteration_0),
                                 scaling_config=ScalingConfig(num_workers=2),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.error is None
    assert result.checkpoint == result.best_checkpoints[1][0]
    assert len(result.best_checkpoints) == 2


def test_checkpoint_upload_fn_returns_checkpoint(tmp_path):
    """Covers test_checkpoint_upload_fn_returns_checkpoint: an upload function must return a Checkpoint."""

    def train_fn():
        with tempfile.TemporaryDirectory() as d:
            train.report(metrics={}, checkpoint=dict_checkpoint(d), checkpoint_upload_fn=lambda x, y: None)

    trainer = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=1),
                                  run_config=RunConfig(storage_path=str(tmp_path)))
    with pytest.raises(WorkerGroupError, match="checkpoint_upload_fn must return a"):
        trainer.fit()


def validate_after_signal(checkpoint, signal_file):
    while not os.path.exists(signal_file):
        time.sleep(0.02)
    return {"validation_score": 100}


def test_get_all_reported_checkpoints_all_consistency_modes(tmp_path):
    """Covers test_get_all_reported_checkpoints_all_consistency_modes: COMMITTED does not wait for a validation,
    VALIDATED does, and then shows the merged metrics."""

    def train_fn(config):
        if train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                train.report(metrics={"training_score": 1}, checkpoint=dict_checkpoint(d), validation=True)
            committed = train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
            assert [c.metrics for c in committed] == [{"training_score": 1}]
            Path(config["signal"]).touch()  # let the validation finish
            validated = train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.VALIDATED)
            assert [c.metrics for c in validated] == [{"training_score": 1, "validation_score": 100}]
        else:
            train.report(metrics={}, checkpoint=None)

    signal_file = str(tmp_path / "signal")
    DataParallelTrainer(train_fn, train_loop_config={"signal": signal_file},
                        validation_config=ValidationConfig(validate_after_signal,
                                                           task_config=ValidationTaskConfig(
                                                               fn_kwargs={"signal_file": signal_file})),
                        scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=str(tmp_path / "storage"))).fit()


def test_get_all_reported_checkpoints_empty_reports(tmp_path):
    """Covers test_get_all_reported_checkpoints_empty_reports."""

    def train_fn():
        train.report(metrics={}, checkpoint=None)
        assert len(train.get_all_reported_checkpoints()) == 0

    DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=str(tmp_path))).fit()
