"""The engine in a plain loop: fit a linear model with numpy, checkpoint every epoch, keep the best two.

Every fourth epoch takes an overshooting step, so val_loss goes up and down: retention evicts the worse
checkpoints as better ones arrive, and keeps the latest one even when it is bad (it is never deleted).
Run it twice to see it resume: the second run continues from the newest committed checkpoint.

    make demo-manager          # or: .venv/bin/python examples/demo_manager.py [RUN_DIR]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import numpy as np

import trainkeep as tk


def on_storage(run_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(run_dir) if n.startswith("checkpoint_"))


def main(run_dir: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8))
    y = x @ rng.normal(size=8) + 0.3 * rng.normal(size=512)
    x_train, y_train, x_val, y_val = x[:384], y[:384], x[384:], y[384:]

    config = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                 checkpoint_score_order="min")
    with tk.CheckpointManager(run_dir, config) as manager:
        weights, start = np.zeros(8), 0
        resume = manager.resume_checkpoint()
        if resume is not None:
            with resume.as_directory() as d:
                weights = np.load(os.path.join(d, "weights.npy"))
            start = resume.get_metadata()["epoch"] + 1
            print(f"resumed from {resume.path} at epoch {start}")

        for epoch in range(start, start + 8):
            lr = 1.3 if epoch % 4 == 3 else 0.15  # an overshooting step every fourth epoch: the loss jumps up
            grad = 2 * x_train.T @ (x_train @ weights - y_train) / len(y_train)
            weights = weights - lr * grad
            val_loss = float(np.mean((x_val @ weights - y_val) ** 2))
            before = on_storage(run_dir)
            with tempfile.TemporaryDirectory() as d:
                np.save(os.path.join(d, "weights.npy"), weights)
                checkpoint = tk.Checkpoint.from_directory(d)
                checkpoint.set_metadata({"epoch": epoch})
                manager.report({"epoch": epoch, "val_loss": val_loss}, checkpoint=checkpoint)
            evicted = sorted(set(before) - set(on_storage(run_dir)))
            print(f"epoch {epoch:2d}  val_loss {val_loss:8.4f}  evicted: {', '.join(evicted) or '-'}")

        print("\nkept checkpoints and why:")
        decision = manager.retention_decision()
        for record in decision.keep:
            print(f"  {record.name}  val_loss={record.metrics['val_loss']:8.4f}  {decision.reasons[record.name]}")
        best, metrics = manager.best_checkpoints[-1]
        print(f"\nbest: {best.path} (val_loss {metrics['val_loss']:.4f})")
        print(f"on storage: {on_storage(run_dir)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("demo_runs", "manager"))
