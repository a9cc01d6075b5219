"""Port of ray-project/ray python/ray/train/v2/tests/test_validation_manager.py (Ray 2.60), imports swapped.

Ray drives its internal ValidationManager with a mocked checkpoint manager and polls it by hand; the behaviour
it checks is shown here through a real run: validated metrics reorder retention, a validation that returns
something other than a dict or runs too long leaves the checkpoint's metrics as reported without failing the
run, and validations still pending at the end of training finish and are merged before ``fit()`` returns.
Ray stops a slow validation with ``ray.cancel``; trainkeep's ``ValidationTaskConfig(timeout_s=)`` does.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import trainkeep as train
from trainkeep import (
    Checkpoint,
    CheckpointConfig,
    DataParallelTrainer,
    ReportedCheckpointStatus,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    ValidationTaskConfig,
)


def report_with_validation(config):
    """Report one checkpoint per entry of config["reports"]: (reported score, validation kwargs)."""
    for score, kwargs in config["reports"]:
        with tempfile.TemporaryDirectory() as d:
            Path(d, "data.json").write_text(json.dumps({"score": score}))
            train.report({"score": score}, checkpoint=Checkpoint.from_directory(d),
                         validation=ValidationTaskConfig(fn_kwargs=kwargs))
    if config.get("list_statuses"):  # waits for the validations to end (30 s at most, not forever)
        started = time.monotonic()
        statuses = [c.status.name for c in train.get_all_reported_checkpoints(timeout_s=30)]
        assert time.monotonic() - started < 20, "the listing waited past the end of the validation"
        train.report({"statuses": statuses})


def validate_to_score(checkpoint, score):
    time.sleep(0.3)  # still running when training ends: fit() waits for it, as Ray's controller shutdown does
    return {"score": score}


def test_checkpoint_validation_management_reordering(tmp_path):
    """Covers test_checkpoint_validation_management_reordering and test_before_controller_shutdown: the
    checkpoint reported low but validated high is the one kept."""
    config = {"reports": [(1, {"score": 200}), (2, {"score": 100})]}
    result = DataParallelTrainer(
        report_with_validation, train_loop_config=config, validation_config=ValidationConfig(validate_to_score),
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(storage_path=str(tmp_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score")),
    ).fit()
    assert result.best_checkpoints[-1][1] == {"score": 200}
    with result.best_checkpoints[-1][0].as_directory() as d:
        assert json.loads(Path(d, "data.json").read_text()) == {"score": 1}
    assert result.get_best_checkpoint("score", "max") == result.best_checkpoints[-1][0]


def validate_returning_a_string(checkpoint):
    return "invalid_return_type"


def validate_forever(checkpoint):
    while True:
        time.sleep(1)


def test_checkpoint_validation_management_failure(tmp_path):
    """Covers test_checkpoint_validation_management_failure: a validation that returns no dict changes no
    metric and fails nothing."""
    config = {"reports": [(7, {})], "list_statuses": True}
    result = DataParallelTrainer(report_with_validation, train_loop_config=config,
                                 validation_config=ValidationConfig(validate_returning_a_string),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.error is None
    assert result.metrics == {"statuses": [ReportedCheckpointStatus.VALIDATION_FAILED.name]}
    assert result.best_checkpoints[0][1] == {"score": 7}


def test_checkpoint_validation_management_slow_validate_fn(tmp_path):
    """Covers test_checkpoint_validation_management_slow_validate_fn: a validation stopped for its time
    changes no metric and fails nothing."""
    config = {"reports": [(7, {})], "list_statuses": True}
    result = DataParallelTrainer(report_with_validation, train_loop_config=config,
                                 validation_config=ValidationConfig(validate_forever,
                                                                    task_config=ValidationTaskConfig(timeout_s=1)),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.error is None
    assert result.metrics == {"statuses": [ReportedCheckpointStatus.VALIDATION_TIMEOUT.name]}
    assert result.best_checkpoints[0][1] == {"score": 7}
