"""Port of ray-project/ray python/ray/train/v2/tests/test_xgboost_trainer.py (Ray 2.60), imports swapped.

Ray feeds the workers Ray Data shards of scikit-learn's breast-cancer set; this port builds a comparable binary
classification set with numpy and gives each rank its shard by hand (Ray Data is not used here). Ray's
``num_workers=0`` (local mode) case is not supported (pinned in test_v2_differences.py, as is
``XGBoostTrainer.get_model``, which Ray answers with a DeprecationWarning and trainkeep does not have).
"""

from __future__ import annotations

import numpy as np
import pytest

import trainkeep as train
from trainkeep import RunConfig, ScalingConfig

xgboost = pytest.importorskip("xgboost")

NUM_WORKERS = 1  # two workers join one XGBoost collective in tests/frameworks/test_boosting.py (slow here)
PARAMS = {"tree_method": "approx", "objective": "binary:logistic", "eval_metric": ["logloss", "error"]}


def binary_data(rank: int, world_size: int, split: str):
    rng = np.random.default_rng(0 if split == "train" else 1)
    x = rng.normal(size=(300, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x[rank::world_size], y[rank::world_size]


def xgboost_train_fn_per_worker(config):
    from trainkeep.xgboost import RayTrainReportCallback

    checkpoint = train.get_checkpoint()
    starting_model, remaining_iters = None, 10
    if checkpoint:
        starting_model = RayTrainReportCallback.get_model(checkpoint)
        remaining_iters -= starting_model.num_boosted_rounds()
    context = train.get_context()
    evals = []
    for split in ("train", "valid"):
        x, y = binary_data(context.get_world_rank(), context.get_world_size(), split)
        evals.append((xgboost.DMatrix(x, label=y), split))
    xgboost.train(config, dtrain=evals[0][0], evals=evals, num_boost_round=remaining_iters,
                  xgb_model=starting_model, verbose_eval=False, callbacks=[RayTrainReportCallback()])


def test_fit_in_a_worker_process(tmp_path):
    """Covers test_fit_distributed_and_local_mode[2], with one worker process: the model is checkpointed."""
    from trainkeep.xgboost import RayTrainReportCallback, XGBoostTrainer

    result = XGBoostTrainer(train_loop_per_worker=xgboost_train_fn_per_worker, train_loop_config=PARAMS,
                            scaling_config=ScalingConfig(num_workers=NUM_WORKERS),
                            run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.metrics["valid-error"] < 0.2
    assert RayTrainReportCallback.get_model(result.checkpoint).num_boosted_rounds() == 10
