"""PyTorch Lightning on 2 workers (DDP over gloo), checkpointed every 2 epochs and at the end, keeping the best
two by train_loss. Re-running it with more epochs resumes from the newest checkpoint.

    .venv/bin/python examples/integrations/lightning_example.py [STORAGE_PATH]
"""

from __future__ import annotations

import os
import sys

import trainkeep as tk
from trainkeep.lightning import (
    CHECKPOINT_NAME,
    LightningTrainer,
    RayDDPStrategy,
    RayLightningEnvironment,
    RayTrainReportCallback,
    prepare_trainer,
)


def train_loop(config):
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, sync_dist=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=64)
    trainer = prepare_trainer(pl.Trainer(
        max_epochs=config["epochs"], accelerator="cpu", devices="auto", strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()], callbacks=[RayTrainReportCallback()], enable_progress_bar=False,
        logger=False, enable_checkpointing=False))
    checkpoint = tk.get_checkpoint()
    if checkpoint is None:
        trainer.fit(Regressor(), train_dataloaders=loader)
        return
    with checkpoint.as_directory() as d:
        trainer.fit(Regressor(), train_dataloaders=loader, ckpt_path=os.path.join(d, CHECKPOINT_NAME))


if __name__ == "__main__":
    storage = sys.argv[1] if len(sys.argv) > 1 else "demo_runs"
    trainer = LightningTrainer(
        train_loop, train_loop_config={"epochs": 6}, scaling_config=tk.ScalingConfig(num_workers=2),
        run_config=tk.RunConfig(name="lightning", storage_path=storage,
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=2, checkpoint_frequency=2,
                                                                      checkpoint_score_attribute="train_loss",
                                                                      checkpoint_score_order="min")))
    result = trainer.fit()
    print("kept:", [(c.path, round(m["train_loss"], 4)) for c, m in result.best_checkpoints])
