"""A Trainable class: trainkeep owns the loop and checkpoints every 3 iterations and at the end.

    .venv/bin/python examples/integrations/trainable_example.py [STORAGE_PATH]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import trainkeep as tk


class LinearRegression(tk.Trainable):
    def setup(self, config):
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(256, 4))
        self.y = self.x @ np.array([1.0, -2.0, 0.5, 3.0])
        self.w = np.zeros(4)
        self.lr = config["lr"]

    def step(self):
        grad = 2 * self.x.T @ (self.x @ self.w - self.y) / len(self.y)
        self.w -= self.lr * grad
        return {"loss": float(np.mean((self.x @ self.w - self.y) ** 2))}

    def save_checkpoint(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "w.json"), "w") as f:
            json.dump(self.w.tolist(), f)

    def load_checkpoint(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "w.json")) as f:
            self.w = np.array(json.load(f))


if __name__ == "__main__":
    storage = sys.argv[1] if len(sys.argv) > 1 else "demo_runs"
    trainer = tk.TrainableTrainer(
        LinearRegression, config={"lr": 0.05}, stop={"training_iteration": 10},
        run_config=tk.RunConfig(name="trainable", storage_path=storage,
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=2, checkpoint_frequency=3)))
    result = trainer.fit()
    print("checkpointed iterations:",
          [row["metrics"]["training_iteration"] for row in result.history if row["checkpoint"]])
    print("kept:", [c.path for c, _ in result.best_checkpoints], "final loss:", result.metrics["loss"])
