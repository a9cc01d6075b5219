"""Port of the Python snippets of ray-project/ray doc/source/train/user-guides/persistent-storage.rst (Ray 2.60),
imports swapped to trainkeep.

Cloud storage by URL, a shared or local filesystem path, a custom ``pyarrow.fs`` filesystem with a stripped
``storage_path``, an fsspec filesystem wrapped with ``pyarrow.fs.PyFileSystem(FSSpecHandler(...))``, the overview
of a run's outputs (``result.filesystem, result.path`` and the checkpoint's), and the working directory of the
workers. S3 is a real moto server on 127.0.0.1 (the ``moto_endpoint`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import Checkpoint


def train_fn(config):
    """"Overview of Ray Train outputs": a checkpoint per epoch, named checkpoint_epoch=<i> on the page."""
    for i in range(config.get("epochs", 2)):
        metrics = {"loss": 1.0 / (i + 1)}
        with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
            Path(temp_checkpoint_dir, "checkpoint.pt").write_text(f"epoch {i}")
            train.report(metrics, checkpoint=Checkpoint.from_directory(temp_checkpoint_dir),
                         checkpoint_dir_name=f"checkpoint_epoch={i}")


def fit(run_config: train.RunConfig, workers: int = 2) -> train.Result:
    return train.DataParallelTrainer(train_fn, scaling_config=train.ScalingConfig(num_workers=workers),
                                     run_config=run_config).fit()


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create a bucket on the moto server; point the AWS environment (inherited by the workers) at it."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(key, value)
    name = f"bucket-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


def test_cloud_storage_by_url_and_the_outputs_overview(bucket):
    """"Cloud storage": ``storage_path="s3://bucket-name/sub-path/"``; "Overview of Ray Train outputs": the run
    lives at ``bucket-name/sub-path/unique-run-id`` and its checkpoints are ``checkpoint_epoch=<i>`` in it."""
    result = fit(train.RunConfig(storage_path=f"s3://{bucket}/sub-path/", name="unique-run-id"))
    assert result.path == f"{bucket}/sub-path/unique-run-id"
    assert result.checkpoint.path == f"{bucket}/sub-path/unique-run-id/checkpoint_epoch=1"
    names = sorted(p.rsplit("/", 1)[1] for p in result.filesystem.ls(result.path, refresh=True))
    assert [n for n in names if n.startswith("checkpoint_")] == ["checkpoint_epoch=0", "checkpoint_epoch=1"]
    with result.checkpoint.as_directory() as d:
        assert Path(d, "checkpoint.pt").read_text() == "epoch 1"


def test_custom_pyarrow_s3_filesystem_with_a_stripped_storage_path(bucket, moto_endpoint):
    """"Custom storage": ``pyarrow.fs.S3FileSystem(endpoint_override=...)`` as ``storage_filesystem`` with
    ``storage_path="bucket-name/sub-path"`` (no ``s3://``)."""
    import pyarrow.fs

    fs = pyarrow.fs.S3FileSystem(endpoint_override=moto_endpoint, access_key="testing", secret_key="testing",
                                 region="us-east-1")
    result = fit(train.RunConfig(storage_filesystem=fs, storage_path=f"{bucket}/sub-path", name="unique-run-id"),
                 workers=1)
    assert result.path == f"{bucket}/sub-path/unique-run-id"
    info = fs.get_file_info(f"{bucket}/sub-path/unique-run-id/checkpoint_epoch=1/checkpoint.pt")
    assert info.type == pyarrow.fs.FileType.File
    again = train.Result.from_path(f"{bucket}/sub-path/unique-run-id", storage_filesystem=fs)
    assert list(again.metrics_dataframe["loss"]) == [1.0, 0.5]


def test_fsspec_filesystem_wrapped_for_pyarrow(bucket, moto_endpoint):
    """"fsspec filesystems": an s3fs filesystem wrapped in ``pyarrow.fs.PyFileSystem(FSSpecHandler(...))``."""
    import pyarrow.fs
    import s3fs

    s3_fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_endpoint)
    custom_fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(s3_fs))
    result = fit(train.RunConfig(storage_path=bucket, storage_filesystem=custom_fs, name="minio-run"), workers=1)
    assert s3_fs.cat_file(f"{bucket}/minio-run/checkpoint_epoch=0/checkpoint.pt") == b"epoch 0"
    assert result.checkpoint.path == f"{bucket}/minio-run/checkpoint_epoch=1"


def test_local_storage_path_holds_the_run_under_its_name(tmp_path):
    """"Shared filesystem" / "Local storage": results under ``<storage_path>/experiment_name``."""
    storage_path = str(tmp_path / "custom" / "storage" / "path")
    result = fit(train.RunConfig(storage_path=storage_path, name="experiment_name"), workers=1)
    assert result.path == os.path.join(storage_path, "experiment_name")
    assert sorted(n for n in os.listdir(result.path) if n.startswith("checkpoint_")) == [
        "checkpoint_epoch=0", "checkpoint_epoch=1"]


def check_working_dir(config):
    # the page's RAY_CHDIR_TO_TRIAL_DIR=0 example: each worker reads a file relative to the launch directory
    assert os.path.exists("./data.txt"), os.getcwd()
    return Path("./data.txt").read_text()


def test_workers_keep_the_launch_directory_as_working_directory(tmp_path, monkeypatch):
    """"Keep the original current working directory": with RAY_CHDIR_TO_TRIAL_DIR=0 every worker sees the
    driver's files by relative path. trainkeep never changes the workers' working directory, so this holds
    with or without the variable. (The page's ``ray.init(runtime_env=...)`` has no counterpart: the local
    executor's workers run on the driver's machine.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    with open("./data.txt", "w") as f:
        f.write("some data")
    result = train.DataParallelTrainer(check_working_dir, scaling_config=train.ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path / "results"))).fit()
    assert result.return_value == "some data"
