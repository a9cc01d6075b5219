"""Port of ray-project/ray python/ray/train/v2/tests/test_lightgbm_trainer.py (Ray 2.60), imports swapped.

Ray feeds the workers Ray Data shards of scikit-learn's breast-cancer set plus a categorical column; this port
builds a comparable set with pandas and numpy and gives each rank its shard by hand. Ray's ``num_workers=0``
(local mode) case is not supported (pinned in test_v2_differences.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import trainkeep as train
from trainkeep import RunConfig, ScalingConfig

lightgbm = pytest.importorskip("lightgbm")
pd = pytest.importorskip("pandas")

NUM_WORKERS = 1  # two workers join one LightGBM collective in tests/frameworks/test_boosting.py (slow here)
PARAMS = {"objective": "binary", "metric": ["binary_logloss", "binary_error"]}


def frame_with_categoricals(rank: int, world_size: int, split: str):
    rng = np.random.default_rng(0 if split == "train" else 1)
    x = rng.normal(size=(300, 6))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    df["target"] = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    df["categorical_column"] = pd.Series((["A", "B"] * 150)[:300]).astype("category")
    return df.iloc[rank::world_size]


def lightgbm_train_fn_per_worker(config):
    from trainkeep.lightgbm import RayTrainReportCallback, get_network_params

    context = train.get_context()
    valid_sets, valid_names = [], []
    for split in ("train", "valid"):
        df = frame_with_categoricals(context.get_world_rank(), context.get_world_size(), split)
        valid_sets.append(lightgbm.Dataset(df.drop("target", axis=1), label=df["target"]))
        valid_names.append(split)
    params = {**config, "verbose": -1, **get_network_params()}
    lightgbm.train(params=params, train_set=valid_sets[0], num_boost_round=10, valid_sets=valid_sets,
                   valid_names=valid_names, init_model=None, callbacks=[RayTrainReportCallback()])


def test_fit_with_categoricals_in_a_worker_process(tmp_path):
    """Covers test_fit_with_categoricals_for_distributed_and_local_mode[2], with one worker process: the
    checkpointed model keeps the categories."""
    from trainkeep.lightgbm import LightGBMTrainer, RayTrainReportCallback

    result = LightGBMTrainer(train_loop_per_worker=lightgbm_train_fn_per_worker, train_loop_config=PARAMS,
                             scaling_config=ScalingConfig(num_workers=NUM_WORKERS),
                             run_config=RunConfig(storage_path=str(tmp_path))).fit()
    model = RayTrainReportCallback.get_model(result.checkpoint)
    assert model.pandas_categorical == [["A", "B"]]
    assert result.metrics["valid-binary_error"] < 0.2
