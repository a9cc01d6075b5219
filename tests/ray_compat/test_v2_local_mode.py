"""Port of ray-project/ray python/ray/train/v2/tests/test_local_mode.py (Ray 2.60), imports swapped.

Ray's local mode (``ScalingConfig(num_workers=0)``: the loop runs in the driver) is not supported by trainkeep:
``num_workers=0`` is a ValueError, pinned in test_v2_differences.py. What applies is the behaviour the local
mode tests check: one worker that reports metrics and a checkpoint gives a Result with both. The framework
cases (JAX/TPU, TensorFlow, Lightning, Transformers, and XGBoost/LightGBM fed by Ray Data) are Ray's local mode
of those trainers; the XGBoost and LightGBM trainers are ported in their own files.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import trainkeep as train
from trainkeep import Checkpoint, DataParallelTrainer, RunConfig, ScalingConfig


def test_data_parallel_trainer_single_worker(tmp_path):
    """Covers test_data_parallel_trainer_local_mode, with one worker process instead of the driver."""

    def train_fn():
        with tempfile.TemporaryDirectory() as d:
            Path(d, "data.json").write_text(json.dumps({}))
            train.report(metrics={"test": 1}, checkpoint=Checkpoint.from_directory(d))

    result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=1),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.metrics == {"test": 1}
    assert result.checkpoint
    assert result.error is None
