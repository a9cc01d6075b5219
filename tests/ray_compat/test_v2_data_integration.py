"""Port of ray-project/ray python/ray/train/v2/tests/test_data_integration.py (Ray 2.60), imports swapped.

Ray's tests shard ``ray.data.range(N)`` on a Ray cluster. Here they run on the local executor (no Ray), with
the dataset as a numpy array of the same rows, which the local executor splits as Ray's ``streaming_split``
would split rows that divide evenly; a shard is then the rank's rows (a numpy slice), so the rows of a batch
are counted with ``len()`` instead of ``iter_batches()``. The ``ray.data`` path itself runs on a real Ray
cluster in tests/ray/test_ray_executor.py.

Not ported, because they test Ray Data or Ray Train internals rather than behaviour a training function sees:
``test_datasets_callback`` and ``test_v2_no_negative_exclude_resources`` (Ray's DatasetsCallback and dummy
worker groups), ``test_data_context_propagation``, ``test_default_ingest_options_inherited_from_context``,
``test_configure_locality`` (a MagicMock of ``DataConfig.configure``, which trainkeep's DataConfig does not
have), ``test_per_epoch_preprocessing``, ``test_parquet_file_shuffle_with_executions``, the
``exclude_resources`` / ``resource_limits`` / per-dataset ``ExecutionOptions`` tests (Ray Data's execution
options, which only the Ray executor applies) and ``test_fixed_scaling_policy_coordinator_lifecycle`` (Ray's
autoscaling coordinator).
"""

from __future__ import annotations

import numpy as np
import pytest

import trainkeep as train
from trainkeep import DataParallelTrainer


def _run_config(tmp_path) -> train.RunConfig:
    return train.RunConfig(storage_path=str(tmp_path / "storage"))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_dataset_sharding_across_workers(tmp_path, num_workers):
    """Tests that the dataset shards properly across a variety of num_workers."""
    NUM_ROWS = 1000

    train_ds = np.arange(NUM_ROWS)

    def train_fn():
        with pytest.raises(KeyError):
            train.get_dataset_shard("val")

        train_ds = train.get_dataset_shard("train")
        num_rows = len(train_ds)
        assert num_rows == NUM_ROWS // num_workers

    trainer = DataParallelTrainer(
        train_fn,
        datasets={"train": train_ds},
        scaling_config=train.ScalingConfig(num_workers=num_workers),
        run_config=_run_config(tmp_path),
    )
    trainer.fit()


@pytest.mark.parametrize("datasets_to_split", ["all", ["train"], []])
def test_multiple_datasets(tmp_path, datasets_to_split):
    """Tests that the dataset is sharded across a variety of num_workers."""
    NUM_ROWS = 1000
    NUM_WORKERS = 2

    train_ds = np.arange(NUM_ROWS)
    val_ds = np.arange(NUM_ROWS)

    def train_fn():
        for dataset_name in ["train", "val"]:
            ds = train.get_dataset_shard(dataset_name)
            num_rows = len(ds)

            if datasets_to_split == "all" or dataset_name in datasets_to_split:
                assert num_rows == NUM_ROWS // NUM_WORKERS
            else:
                assert num_rows == NUM_ROWS

    trainer = DataParallelTrainer(
        train_fn,
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=train.DataConfig(datasets_to_split=datasets_to_split),
        scaling_config=train.ScalingConfig(num_workers=NUM_WORKERS),
        run_config=_run_config(tmp_path),
    )
    trainer.fit()


def test_data_config_validation():
    with pytest.raises(TypeError, match="`datasets_to_split` should be.*"):
        train.DataConfig(datasets_to_split="hello")
    with pytest.raises(TypeError, match="`datasets_to_split` should be.*"):
        train.DataConfig(datasets_to_split={})
