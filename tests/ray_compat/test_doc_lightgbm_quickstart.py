"""Port of ray-project/ray doc/source/train/doc_code/lightgbm_quickstart.py (Ray 2.60), ``__lightgbm_ray_start__``,
imports swapped to trainkeep.

Two workers run ``lgb.train`` with ``RayTrainReportCallback`` (20 rounds; the page's 100 add nothing); the driver loads the model with
``RayTrainReportCallback.get_model(result.checkpoint)``. The page's Ray Data sets of the iris CSVs on S3 are
generated in the loop here (150 rows, as iris), each worker taking every second row.
"""

from __future__ import annotations

import pytest

import trainkeep


def make_iris_like(seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    target = rng.integers(0, 3, 150)
    df = pd.DataFrame(rng.normal(size=(150, 4)) + target[:, None],
                      columns=["sepal length", "sepal width", "petal length", "petal width"])
    df["target"] = target
    return df


def train_func():
    import lightgbm as lgb

    from trainkeep.lightgbm import RayTrainReportCallback

    context = trainkeep.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train_df = make_iris_like(0).iloc[rank::world]
    eval_df = make_iris_like(1).iloc[rank::world]
    train_set = lgb.Dataset(train_df.drop("target", axis=1), label=train_df["target"])
    eval_set = lgb.Dataset(eval_df.drop("target", axis=1), label=eval_df["target"])
    params = {"objective": "multiclass", "num_class": 3, "metric": ["multi_logloss", "multi_error"],
              "verbosity": -1, "boosting_type": "gbdt", "num_leaves": 31, "learning_rate": 0.05,
              "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 5}
    lgb.train(params, train_set, valid_sets=[eval_set], valid_names=["eval"], num_boost_round=20,
              callbacks=[RayTrainReportCallback()])


@pytest.mark.slow  # the workers import a framework: seconds each
def test_lightgbm_quickstart(tmp_path):
    pytest.importorskip("lightgbm")
    from trainkeep.lightgbm import LightGBMTrainer, RayTrainReportCallback

    scaling_config = trainkeep.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1})
    trainer = LightGBMTrainer(train_func, scaling_config=scaling_config,
                              run_config=trainkeep.RunConfig(storage_path=str(tmp_path)))
    result = trainer.fit()
    model = RayTrainReportCallback.get_model(result.checkpoint)
    assert model.current_iteration() == 20
    assert {"eval-multi_logloss", "eval-multi_error"} <= set(result.metrics)
