"""Port of ray-project/ray python/ray/train/v2/tests/test_collective.py and test_collectives.py (Ray 2.60),
``ray.train.collective`` swapped for ``trainkeep.collective``.

Ray counts the ranks that reached the barrier in an actor; here each rank leaves a file before the barrier.
``test_broadcast_from_rank_zero_data_too_big`` patches a private Ray constant and is not ported.
"""

from __future__ import annotations

import os
from pathlib import Path

import trainkeep as train
import trainkeep.collective
from trainkeep import DataParallelTrainer, RunConfig, ScalingConfig


def test_barrier(tmp_path):
    """Covers test_barrier (both files): after the barrier, every rank has arrived."""

    def train_fn(config):
        Path(config["dir"], f"reached_{train.get_context().get_world_rank()}").touch()
        trainkeep.collective.barrier()
        assert sorted(os.listdir(config["dir"])) == ["reached_0", "reached_1"]

    (tmp_path / "marks").mkdir()
    DataParallelTrainer(train_fn, train_loop_config={"dir": str(tmp_path / "marks")},
                        scaling_config=train.ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=str(tmp_path / "storage"))).fit()


def test_broadcast_from_rank_zero(tmp_path):
    """Covers test_broadcast_from_rank_zero (both files): every rank gets rank 0's object."""

    def train_fn():
        rank = train.get_context().get_world_rank()
        value = trainkeep.collective.broadcast_from_rank_zero({"key": rank})
        assert value == {"key": 0}
        train.report({"value": value})

    result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.metrics == {"value": {"key": 0}}
