"""Port of ray-project/ray python/ray/train/v2/tests/test_failure_policy.py (Ray 2.60), imports swapped.

Ray asks its internal failure policy for RETRY / RAISE decisions; what a user sees is how many times the worker
group starts: ``max_failures + 1`` times for a loop that always fails, then ``fit()`` raises; with -1, as many
times as it takes. Ray's 0, 1, 10 are 0 and 2 here, to keep the suite fast. The ``scheduling_failure_limit`` tests are about
Ray's placement of workers on a cluster and are not ported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import DataParallelTrainer, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError


def counting_loop(config):
    """Record an attempt (rank 0), then fail on half the ranks while attempts remain below ``succeed_at``."""
    rank = train.get_context().get_world_rank()
    attempts = Path(config["dir"])
    if rank == 0:
        (attempts / f"attempt_{len(list(attempts.iterdir()))}").touch()
    train.collective.barrier()
    if len(list(attempts.iterdir())) <= config["succeed_at"] and rank % 2 == 0:
        raise RuntimeError(f"Worker {rank} failed")


@pytest.mark.parametrize("max_failures", [0, 2])
def test_max_failures(tmp_path, max_failures):
    """Covers test_max_failures: max_failures retries, then the error."""
    (tmp_path / "attempts").mkdir()
    trainer = DataParallelTrainer(counting_loop, train_loop_config={"dir": str(tmp_path / "attempts"),
                                                                    "succeed_at": 1000},
                                  scaling_config=ScalingConfig(num_workers=2),
                                  run_config=RunConfig(storage_path=str(tmp_path / "storage"),
                                                       failure_config=FailureConfig(max_failures=max_failures)))
    with pytest.raises(WorkerGroupError):
        trainer.fit()
    assert len(list((tmp_path / "attempts").iterdir())) == max_failures + 1


def test_infinite_retry(tmp_path):
    """Covers test_infinite_retry: -1 retries until the loop succeeds (here, on the third attempt)."""
    (tmp_path / "attempts").mkdir()
    DataParallelTrainer(counting_loop, train_loop_config={"dir": str(tmp_path / "attempts"), "succeed_at": 2},
                        scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=str(tmp_path / "storage"),
                                             failure_config=FailureConfig(max_failures=-1))).fit()
    assert len(list((tmp_path / "attempts").iterdir())) == 3
