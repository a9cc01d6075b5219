"""Port of ray-project/ray doc/source/train/doc_code/xgboost_quickstart.py (Ray 2.60), ``__xgboost_ray_start__``,
imports swapped to trainkeep.

Two workers train one XGBoost model on their shards with ``RayTrainReportCallback``; the driver loads the
booster from ``result.checkpoint`` under ``RayTrainReportCallback.CHECKPOINT_NAME``. The page reads the iris
CSVs from S3 into Ray Data sets and takes each worker's part with ``get_dataset_shard``; here the data are
generated in the loop (150 rows, as iris) and each worker takes every second row from its rank.
"""

from __future__ import annotations

import os

import pytest

import trainkeep


def make_iris_like(seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    target = rng.integers(0, 3, 150)
    features = rng.normal(size=(150, 4)) + target[:, None]
    df = pd.DataFrame(features, columns=["sepal length", "sepal width", "petal length", "petal width"])
    df["target"] = target
    return df


def train_func():
    import xgboost

    from trainkeep.xgboost import RayTrainReportCallback

    # 2. Load this worker's shard (the page: get_dataset_shard(...).materialize().to_pandas()).
    context = trainkeep.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train_df = make_iris_like(0).iloc[rank::world]
    eval_df = make_iris_like(1).iloc[rank::world]
    dtrain = xgboost.DMatrix(train_df.drop("target", axis=1), label=train_df["target"])
    deval = xgboost.DMatrix(eval_df.drop("target", axis=1), label=eval_df["target"])
    # 3. Define your xgboost model training parameters.
    params = {"tree_method": "approx", "objective": "reg:squarederror", "eta": 1e-4, "subsample": 0.5,
              "max_depth": 2}
    # 4. Do distributed data-parallel training.
    xgboost.train(params, dtrain=dtrain, evals=[(deval, "validation")], num_boost_round=10,
                  callbacks=[RayTrainReportCallback()])


@pytest.mark.slow  # the workers import a framework: seconds each
def test_xgboost_quickstart(tmp_path):
    xgboost = pytest.importorskip("xgboost")
    from trainkeep.xgboost import RayTrainReportCallback, XGBoostTrainer

    # 5. Configure scaling and resource requirements (the page gives each worker 2 CPUs).
    scaling_config = trainkeep.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1})
    # 6. Launch distributed training job.
    trainer = XGBoostTrainer(train_func, scaling_config=scaling_config,
                             run_config=trainkeep.RunConfig(storage_path=str(tmp_path)))
    result = trainer.fit()
    # 7. Load the trained model.
    with result.checkpoint.as_directory() as checkpoint_dir:
        model_path = os.path.join(checkpoint_dir, RayTrainReportCallback.CHECKPOINT_NAME)
        model = xgboost.Booster()
        model.load_model(model_path)
    assert model.num_boosted_rounds() == 10
    assert "validation-rmse" in result.metrics
    # a round per boosting round, then the callback's checkpoint at the end (Ray's callback reports it too)
    assert len(result.metrics_dataframe) == 11
    assert result.best_checkpoints[0][1]["training_iteration"] == 10


def test_report_callbacks_name_their_model_file_as_ray_does():
    """Ray's ``RayTrainReportCallback.CHECKPOINT_NAME`` of each boosting framework (the quickstarts use it; the
    Lightning callback has it too, for the checkpoints guide's restore snippet, but importing Lightning costs
    seconds)."""
    pytest.importorskip("lightgbm")
    from trainkeep.lightgbm import RayTrainReportCallback as LightGBMCallback
    from trainkeep.xgboost import RayTrainReportCallback as XGBoostCallback

    assert XGBoostCallback.CHECKPOINT_NAME == "model.ubj"
    assert LightGBMCallback.CHECKPOINT_NAME == "model.txt"
