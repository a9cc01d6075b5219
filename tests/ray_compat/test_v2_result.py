"""Port of ray-project/ray python/ray/train/v2/tests/test_result.py (Ray 2.60), imports swapped to trainkeep.

Ray's remote storage is a mock S3 bucket; here it is a real moto server on 127.0.0.1, reached through the
standard AWS environment variables, so the URL alone names the run, as in Ray's test. The two runs are built
once per module and every ``from_path`` variation reads them. Ray builds them with a TorchTrainer; this port
uses a DataParallelTrainer, which reports the same way without paying for torch in every worker (the
TorchTrainer is ported in test_v2_torch_trainer.py). PathLike with a URL is left out, as in Ray. The error messages of ``from_path`` and of
``get_best_checkpoint`` differ from Ray's (the types match): pinned in test_v2_differences.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import (
    Checkpoint,
    CheckpointConfig,
    DataParallelTrainer,
    Result,
    RunConfig,
    ScalingConfig,
    WorkerGroupError,
)

NUM_ITERATIONS = 5
NUM_CHECKPOINTS = 3
EXP_NAME = "test_result_restore_v2"


def save_dict(data: dict, directory: str) -> Checkpoint:
    with open(os.path.join(directory, "data.json"), "w") as f:
        json.dump(data, f)
    return Checkpoint.from_directory(directory)


def load_dict(checkpoint: Checkpoint) -> dict:
    with checkpoint.as_directory() as d, open(os.path.join(d, "data.json")) as f:
        return json.load(f)


def worker_loop(config):
    for i in range(NUM_ITERATIONS):
        train.report({"metric_a": -100, "metric_b": -100})  # metrics-only reports in between
        if train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                train.report({"metric_a": i, "metric_b": -i}, checkpoint=save_dict({"iter": i}, d))
        else:
            train.report({"metric_a": i, "metric_b": -i})
    raise RuntimeError()


@pytest.fixture(scope="module")
def s3_env(moto_endpoint):
    """Point the AWS environment at the moto server and create a bucket; yield the bucket's URL."""
    import s3fs

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=moto_endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    bucket = f"result-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).call_s3("create_bucket", Bucket=bucket)
    yield f"s3://{bucket}"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_env):
    """Run the failing dummy trainer once on local storage and once on S3; return {storage: storage_path}."""
    paths = {"local": str(tmp_path_factory.mktemp("result_storage")), "remote": s3_env}
    for storage_path in paths.values():
        trainer = DataParallelTrainer(
            train_loop_per_worker=worker_loop,
            train_loop_config={"a": 1, "b": 2},
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(
                name=EXP_NAME,
                storage_path=storage_path,
                checkpoint_config=CheckpointConfig(num_to_keep=NUM_CHECKPOINTS,
                                                   checkpoint_score_attribute="metric_a",
                                                   checkpoint_score_order="max"),
            ),
        )
        with pytest.raises(WorkerGroupError):
            trainer.fit()
    return paths


def test_result_repr():
    """Covers test_result_repr."""
    res = Result(metrics={"iter": 0, "metric": 1.0}, checkpoint=Checkpoint("/bucket/path/ckpt0"), error=None,
                 path="/bucket/path")
    assert "Checkpoint(filesystem=local, path=/bucket/path/ckpt0)" in repr(res)
    assert "metrics={'iter': 0, 'metric': 1.0}" in repr(res)


def test_get_best_checkpoint():
    """Covers test_get_best_checkpoint."""
    res = Result(
        metrics={}, checkpoint=None, error=None, path="/bucket/path",
        best_checkpoints=[(Checkpoint(f"/bucket/path/ckpt{i}"), {"iter": i, "metric": float(i + 1)})
                          for i in range(4)],
    )
    assert res.get_best_checkpoint(metric="metric", mode="max").path == "/bucket/path/ckpt3"
    assert res.get_best_checkpoint(metric="metric", mode="min").path == "/bucket/path/ckpt0"


STORAGE_AND_PATH_TYPES = [("local", "str"), ("local", "PathLike"), ("remote", "str")]


@pytest.mark.parametrize("storage,path_type", STORAGE_AND_PATH_TYPES)
@pytest.mark.parametrize("pass_storage_filesystem", [True, False])
@pytest.mark.parametrize("trailing_slash", [False, True])
def test_result_restore(runs, storage, path_type, pass_storage_filesystem, trailing_slash):
    """Covers test_result_restore: from_path of a run that kept 3 of 5 checkpoints, then crashed."""
    trial_dir = f"{runs[storage].rstrip('/')}/{EXP_NAME}"
    file_system = None
    if pass_storage_filesystem:
        import fsspec

        file_system, trial_dir = fsspec.core.url_to_fs(trial_dir)
    if trailing_slash:
        trial_dir += "/"
    result = Result.from_path(Path(trial_dir) if path_type == "PathLike" else trial_dir,
                              storage_filesystem=file_system)

    assert result.checkpoint
    assert len(result.best_checkpoints) == NUM_CHECKPOINTS
    assert load_dict(result.get_best_checkpoint(metric="metric_a", mode="max"))["iter"] == NUM_ITERATIONS - 1
    assert load_dict(result.get_best_checkpoint(metric="metric_b", mode="max"))["iter"] == (
        NUM_ITERATIONS - NUM_CHECKPOINTS)
    with pytest.raises(RuntimeError):
        result.get_best_checkpoint(metric="invalid_metric", mode="max")


@pytest.mark.parametrize("storage,path_type", STORAGE_AND_PATH_TYPES)
def test_result_from_path_validation(tmp_path, s3_env, storage, path_type):
    """Covers test_result_from_path_validation: a missing folder, and a folder that holds no run."""
    base = str(tmp_path) if storage == "local" else f"{s3_env}/{uuid.uuid4().hex[:8]}"
    missing, existing = f"{base}/nonexistent_experiment", f"{base}/existing_experiment"
    wrap = Path if path_type == "PathLike" else str
    with pytest.raises(RuntimeError, match="nonexistent_experiment"):
        Result.from_path(wrap(missing))
    if storage == "local":
        Path(existing).mkdir(parents=True)
    else:
        import fsspec

        fs, path = fsspec.core.url_to_fs(existing)
        fs.pipe(f"{path}/.dummy", b"dummy")
    with pytest.raises(RuntimeError, match="existing_experiment"):
        Result.from_path(wrap(existing))
