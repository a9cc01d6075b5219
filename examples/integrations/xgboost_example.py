"""XGBoost on 2 workers, one model over both data shards, checkpointed every 5 rounds and at the end.
Re-running it resumes boosting from the newest checkpoint.

    .venv/bin/python examples/integrations/xgboost_example.py [STORAGE_PATH]
"""

from __future__ import annotations

import sys

import numpy as np

import trainkeep as tk
from trainkeep.xgboost import RayTrainReportCallback, XGBoostTrainer


def train_loop(config):
    import xgboost as xgb

    ctx = tk.get_context()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6))
    y = x @ np.arange(6) + rng.normal(size=2000)
    shard = slice(ctx.get_world_rank(), None, ctx.get_world_size())
    dtrain = xgb.DMatrix(x[shard], label=y[shard])

    model = None
    if (checkpoint := tk.get_checkpoint()) is not None:
        model = RayTrainReportCallback.get_model(checkpoint)
    done = model.num_boosted_rounds() if model is not None else 0
    xgb.train({"max_depth": 4, "eta": 0.2}, dtrain, num_boost_round=config["rounds"] - done, xgb_model=model,
              evals=[(dtrain, "train")], verbose_eval=False, callbacks=[RayTrainReportCallback()])


if __name__ == "__main__":
    storage = sys.argv[1] if len(sys.argv) > 1 else "demo_runs"
    trainer = XGBoostTrainer(
        train_loop, train_loop_config={"rounds": 20}, scaling_config=tk.ScalingConfig(num_workers=2),
        run_config=tk.RunConfig(name="xgboost", storage_path=storage,
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=2, checkpoint_frequency=5,
                                                                      checkpoint_score_attribute="train-rmse",
                                                                      checkpoint_score_order="min")))
    result = trainer.fit()
    print("final train-rmse:", result.metrics["train-rmse"])
    print("kept:", [(c.path, m["training_iteration"]) for c, m in result.best_checkpoints])
