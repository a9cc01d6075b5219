"""LightGBM on 2 workers (data-parallel tree learner on 127.0.0.1), checkpointed every 5 rounds and at the end.

    .venv/bin/python examples/integrations/lightgbm_example.py [STORAGE_PATH]
"""

from __future__ import annotations

import sys

import numpy as np

import trainkeep as tk
from trainkeep.lightgbm import LightGBMTrainer, RayTrainReportCallback, get_network_params


def train_loop(config):
    import lightgbm as lgb

    ctx = tk.get_context()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6))
    y = x @ np.arange(6) + rng.normal(size=2000)
    shard = slice(ctx.get_world_rank(), None, ctx.get_world_size())
    data = lgb.Dataset(x[shard], label=y[shard])

    model = None
    if (checkpoint := tk.get_checkpoint()) is not None:
        model = RayTrainReportCallback.get_model(checkpoint)
    done = model.current_iteration() if model is not None else 0
    params = {"objective": "regression", "verbose": -1, "num_threads": 1, **get_network_params()}
    lgb.train(params, data, num_boost_round=config["rounds"] - done, init_model=model, valid_sets=[data],
              valid_names=["train"], callbacks=[RayTrainReportCallback()])


if __name__ == "__main__":
    storage = sys.argv[1] if len(sys.argv) > 1 else "demo_runs"
    trainer = LightGBMTrainer(
        train_loop, train_loop_config={"rounds": 20}, scaling_config=tk.ScalingConfig(num_workers=2),
        run_config=tk.RunConfig(name="lightgbm", storage_path=storage,
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=2, checkpoint_frequency=5)))
    result = trainer.fit()
    print("final train-l2:", result.metrics["train-l2"])
    print("kept:", [(c.path, m["training_iteration"]) for c, m in result.best_checkpoints])
