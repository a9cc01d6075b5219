"""Port of ray-project/ray python/ray/train/v2/tests/test_persistence.py (Ray 2.60), imports swapped.

Storage kinds as in Ray: a local ("NFS") path, a cloud bucket (a real moto S3 server on 127.0.0.1, reached by
URL through the standard AWS environment variables), and a custom ``pyarrow.fs`` filesystem wrapping fsspec's
``DirFileSystem``. Ray runs every storage kind with both checkpoint configs; this port runs two of the six
pairs (each pair is three attempts of three workers plus a second fit) to keep the suite fast: the local path
with ``num_to_keep=1`` and the custom filesystem keeping all. The cloud kind runs with ``CLOUD=1`` in the
environment (S3 through moto is slow; test_v2_result.py reads a run on it in every suite run). Ray sleeps
between reports to outlast its health check; trainkeep has no polling interval to outlast.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs
import pytest

import trainkeep as train
import trainkeep.collective
from trainkeep import (
    Checkpoint,
    CheckpointConfig,
    DataParallelTrainer,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)

NUM_ITERATIONS = 6
NUM_WORKERS = 3
SCORE_KEY = "score"


def shard_name(rank: int) -> str:
    return f"checkpoint_shard-rank={rank}.pkl"


def train_fn(config):
    start = 0
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir, open(os.path.join(checkpoint_dir, "checkpoint.pkl"),
                                                               "rb") as f:
            start = pickle.load(f)["iter"] + 1
    got = len(train.get_all_reported_checkpoints())
    assert got == min(start, config["num_to_keep"]), f"expected {min(start, config['num_to_keep'])}, got {got}"

    for i in range(start, config["num_iterations"]):
        metrics = {"iter": i, SCORE_KEY: i}
        rank = train.get_context().get_world_rank()
        if rank in config["no_checkpoint_ranks"]:
            train.report(metrics, checkpoint=None, checkpoint_dir_name=f"checkpoint_epoch={i}")
        else:
            with tempfile.TemporaryDirectory() as temp_dir:
                with open(os.path.join(temp_dir, "checkpoint.pkl"), "wb") as f:  # the same file on every rank
                    pickle.dump({"iter": i}, f)
                with open(os.path.join(temp_dir, shard_name(rank)), "wb") as f:
                    pickle.dump({"iter": i}, f)
                train.report(metrics, checkpoint=Checkpoint.from_directory(temp_dir),
                             checkpoint_dir_name=f"checkpoint_epoch={i}")
                assert os.path.exists(temp_dir)  # report() must not delete the user's directory
        trainkeep.collective.barrier()
        if i in config["fail_iters"]:
            got = len(train.get_all_reported_checkpoints())
            assert got == min(i + 1, config["num_to_keep"]), f"expected {min(i + 1, config['num_to_keep'])}"
            raise RuntimeError(f"Failing on iter={i}!!")


@pytest.fixture
def s3_bucket_url(moto_endpoint, monkeypatch):
    """Point the AWS environment at the moto server, create a bucket, and return its URL."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"persistence-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).call_s3("create_bucket", Bucket=bucket)
    return f"s3://{bucket}"


def resolve_storage(kind: str, tmp_path: Path, request) -> tuple[str, object, Path | None]:
    """Return (storage_path, storage_filesystem, local directory that holds the storage path or None)."""
    if kind == "nfs":
        return str(tmp_path / "fake_nfs"), None, tmp_path / "fake_nfs"
    if kind == "cloud":
        return request.getfixturevalue("s3_bucket_url"), None, None
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    root = tmp_path / "custom_fs"
    root.mkdir()
    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(DirFileSystem(path=str(root), fs=LocalFileSystem())))
    return "mock_bucket", fs, root / "mock_bucket"


@pytest.mark.parametrize("storage_path_type,checkpoint_config", [
    ("nfs", CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max")),
    pytest.param("cloud", CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_KEY,
                                           checkpoint_score_order="max"), marks=pytest.mark.slow),
    ("custom_fs", CheckpointConfig()),
], ids=["nfs-keep1", "cloud-keep1", "custom_fs-all"])
def test_trainer(tmp_path, request, storage_path_type, checkpoint_config):
    """Covers test_trainer: failures at iterations 2 and 4, a second fit, and what storage then holds."""
    exp_name = f"trainer_persistence_test-{uuid.uuid4().hex}"
    no_checkpoint_ranks = [0]
    num_to_keep = checkpoint_config.num_to_keep or float("inf")
    storage_path, storage_filesystem, local_root = resolve_storage(storage_path_type, tmp_path, request)
    run_config = RunConfig(storage_path=storage_path, storage_filesystem=storage_filesystem, name=exp_name,
                           checkpoint_config=checkpoint_config, failure_config=FailureConfig(max_failures=2))
    loop_config = {"num_iterations": NUM_ITERATIONS, "fail_iters": [2, 4],
                   "no_checkpoint_ranks": no_checkpoint_ranks, "num_to_keep": num_to_keep}
    for _ in range(2):  # the initial run, then a manually restored one
        result = DataParallelTrainer(train_fn, train_loop_config=loop_config,
                                     scaling_config=ScalingConfig(num_workers=NUM_WORKERS),
                                     run_config=run_config).fit()

    if local_root is None:  # download the bucket to inspect it
        local_root = tmp_path / "inspect"
        result.filesystem.get(storage_path.removeprefix("s3://") + "/", str(local_root), recursive=True)
    storage_fs_path = storage_path.removeprefix("s3://") if storage_path_type == "cloud" else storage_path
    assert result.path.startswith(storage_fs_path)
    for checkpoint, _ in result.best_checkpoints:
        assert checkpoint.path.startswith(result.path)

    assert [p.name for p in local_root.iterdir()] == [exp_name]  # only the one experiment dir
    exp_dir = local_root / exp_name
    expected_num = checkpoint_config.num_to_keep or NUM_ITERATIONS
    epochs = sorted(int(re.search(r"checkpoint_epoch=(\d+)", p.name).group(1))
                    for p in exp_dir.glob("checkpoint_epoch=*"))
    assert epochs == list(range(NUM_ITERATIONS - expected_num, NUM_ITERATIONS))  # the last K epochs
    for checkpoint_dir in exp_dir.glob("checkpoint_epoch=*"):
        assert len(list(checkpoint_dir.glob("checkpoint.pkl"))) == 1
        shards = {int(re.search(r"rank=(\d+)", p.name).group(1)) for p in checkpoint_dir.glob("checkpoint_shard-*.pkl")}
        assert shards == {i for i in range(NUM_WORKERS) if i not in no_checkpoint_ranks}
