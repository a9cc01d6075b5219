"""Port of ray-project/ray python/ray/train/tests/test_new_persistence.py (Ray 2.60), ``test_trainer``, imports
swapped to trainkeep.

Three workers run 6 iterations; rank 0 never checkpoints, every rank writes the same ``checkpoint.pkl`` and
ranks 1 and 2 also a shard of their own; the run fails at iterations 2 and 4 with ``max_failures=1``, so the
first ``fit()`` raises, and a second ``fit()`` finishes it. Storage: a local ("NFS") path and a custom pyarrow
filesystem wrapping fsspec's DirFileSystem, as upstream; upstream's third, a mock S3 bucket, is left to
test_doc_persistent_storage.py (a real moto server), as three workers' rounds on it cost seconds.

Adapted to Ray Train V2, which Ray 2.60 runs by default: the second ``fit()`` resumes by ``(storage_path, name)``
(V2 has no ``Trainer.restore``; pinned in test_doc_differences.py), and the V1-only outputs (Tune's experiment
state, ``result.json``, synced worker artifacts) are not expected. ``test_tuner`` and ``test_local_dir`` test Ray
Tune and are not ported.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem

import trainkeep as train
from trainkeep import Checkpoint, DataParallelTrainer

NUM_ITERATIONS = 6
NUM_WORKERS = 3
SCORE_KEY = "score"
NO_CHECKPOINT_RANKS = [0]


def train_fn(config):
    start = 0
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            with open(os.path.join(checkpoint_dir, "checkpoint.pkl"), "rb") as f:
                start = pickle.load(f)["iter"] + 1
    for i in range(start, config["num_iterations"]):
        metrics = {"iter": i, SCORE_KEY: i}
        rank = train.get_context().get_world_rank()
        if rank in config["no_checkpoint_ranks"]:
            train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as temp_dir:
                with open(os.path.join(temp_dir, "checkpoint.pkl"), "wb") as f:
                    pickle.dump({"iter": i}, f)
                with open(os.path.join(temp_dir, f"checkpoint_shard-rank={rank}.pkl"), "wb") as f:
                    pickle.dump({"iter": i}, f)
                train.report(metrics, checkpoint=Checkpoint.from_directory(temp_dir))
                assert os.path.exists(temp_dir)  # report() must not delete it
        if i in config["fail_iters"] and not os.path.exists(f"{config['marker']}-{i}"):
            Path(f"{config['marker']}-{i}").touch()
            raise RuntimeError(f"Failing on iter={i}!!")


def storage_for(kind: str, tmp_path: Path):
    """Return (storage_path, storage_filesystem, fsspec filesystem to inspect, storage fs path)."""
    if kind == "nfs":
        path = str(tmp_path / "fake_nfs")
        return path, None, fsspec.filesystem("file"), path
    pyarrow_fs = pytest.importorskip("pyarrow.fs")
    (tmp_path / "custom_fs").mkdir()
    inner = DirFileSystem(path=str(tmp_path / "custom_fs"), fs=fsspec.filesystem("file"))
    return "mock_bucket", pyarrow_fs.PyFileSystem(pyarrow_fs.FSSpecHandler(inner)), inner, "mock_bucket"


@pytest.mark.parametrize(("storage_path_type", "checkpoint_config"), [
    ("nfs", train.CheckpointConfig()),
    ("custom_fs", train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_KEY,
                                         checkpoint_score_order="max")),
])
def test_trainer(tmp_path, storage_path_type, checkpoint_config):
    storage_path, storage_filesystem, inspect_fs, storage_fs_path = storage_for(storage_path_type, tmp_path)
    exp_name = "trainer_new_persistence"
    trainer = DataParallelTrainer(
        train_fn,
        train_loop_config={"num_iterations": NUM_ITERATIONS, "fail_iters": [2, 4],
                           "no_checkpoint_ranks": NO_CHECKPOINT_RANKS, "marker": str(tmp_path / "failed")},
        scaling_config=train.ScalingConfig(num_workers=NUM_WORKERS),
        run_config=train.RunConfig(storage_path=storage_path, storage_filesystem=storage_filesystem,
                                   name=exp_name, checkpoint_config=checkpoint_config,
                                   failure_config=train.FailureConfig(max_failures=1)))
    with pytest.raises(train.TrainingFailedError):
        trainer.fit()  # fails at iteration 2 (retried), then at iteration 4 (no retry left)
    result = trainer.fit()  # the same (storage_path, name): resumes after iteration 4

    # the Result's paths
    assert result.path.startswith(storage_fs_path)
    for checkpoint, _ in result.best_checkpoints:
        assert checkpoint.path.startswith(result.path)
    assert result.metrics["iter"] == NUM_ITERATIONS - 1

    # the storage: one run directory, holding num_to_keep (or all) of the last checkpoints
    assert [p.rstrip("/").rsplit("/", 1)[-1] for p in inspect_fs.ls(storage_fs_path, detail=False)] == [exp_name]
    exp_dir = f"{storage_fs_path}/{exp_name}"
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in inspect_fs.ls(exp_dir, detail=False)
                   if p.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_"))
    expected = checkpoint_config.num_to_keep or NUM_ITERATIONS
    assert [int(n.split("_")[-1]) for n in names] == list(range(NUM_ITERATIONS - expected, NUM_ITERATIONS))
    for name in names:
        files = [p.rsplit("/", 1)[-1] for p in inspect_fs.ls(f"{exp_dir}/{name}", detail=False)]
        assert files.count("checkpoint.pkl") == 1  # written by every checkpointing rank, stored once
        shards = {int(m.group(1)) for f in files if (m := re.search(r"checkpoint_shard-rank=(\d+)\.pkl", f))}
        assert shards == {r for r in range(NUM_WORKERS) if r not in NO_CHECKPOINT_RANKS}
    with result.checkpoint.as_directory() as d:
        assert pickle.load(open(os.path.join(d, "checkpoint.pkl"), "rb")) == {"iter": NUM_ITERATIONS - 1}
