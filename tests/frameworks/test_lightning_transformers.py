"""Lightning and Transformers callbacks: checkpoints that Result lists and that load back."""

from __future__ import annotations

import os

import pytest

import trainkeep as tk

pytest.importorskip("lightning", reason="the lightning extra is part of the dev set-up")
pytest.importorskip("transformers", reason="the transformers extra is part of the dev set-up")


def lightning_loop(config):
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainkeep.lightning import (
        CHECKPOINT_NAME,
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, sync_dist=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    trainer = pl.Trainer(max_epochs=config["epochs"], accelerator="cpu", devices="auto",
                         strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()],
                         callbacks=[RayTrainReportCallback()], enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer = prepare_trainer(trainer)
    ckpt_path = None
    if (checkpoint := tk.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            ckpt_path = os.path.join(d, CHECKPOINT_NAME)
            trainer.fit(Regressor(), train_dataloaders=data, ckpt_path=ckpt_path)
    else:
        trainer.fit(Regressor(), train_dataloaders=data)
    return trainer.current_epoch


def test_lightning_callback_checkpoints_every_n_epochs_and_at_end(tmp_path):
    from trainkeep.lightning import LightningTrainer as TorchTrainer

    run_config = tk.RunConfig(name="pl", storage_path=str(tmp_path),
                              checkpoint_config=tk.CheckpointConfig(num_to_keep=2, checkpoint_frequency=2,
                                                                    checkpoint_score_attribute="train_loss",
                                                                    checkpoint_score_order="min"))
    result = TorchTrainer(lightning_loop, train_loop_config={"epochs": 5},
                          scaling_config=tk.ScalingConfig(num_workers=2), run_config=run_config).fit()
    epochs = [row["metrics"]["epoch"] for row in result.history]
    assert epochs == [0, 1, 2, 3, 4]
    assert [row["metrics"]["epoch"] for row in result.history if row["checkpoint"]] == [1, 3, 4]
    assert len(result.best_checkpoints) == 2
    import torch

    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "checkpoint.ckpt"), weights_only=False)
    assert state["epoch"] == 4 and "layer.weight" in state["state_dict"]
    # a second fit() resumes from the epoch-5 checkpoint and trains up to epoch 7
    result2 = TorchTrainer(lightning_loop, train_loop_config={"epochs": 7},
                           scaling_config=tk.ScalingConfig(num_workers=2), run_config=run_config).fit()
    assert [row["metrics"]["epoch"] for row in result2.history][5:] == [5, 6]
    assert result2.return_value == 7


def transformers_loop(config):
    import torch
    import transformers

    from trainkeep.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    class TinyModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x, labels=None):
            out = self.layer(x)
            loss = torch.nn.functional.mse_loss(out, labels) if labels is not None else None
            return {"loss": loss, "logits": out}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(32, 4, generator=g)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.x[i].sum().reshape(1)}

    args = transformers.TrainingArguments(
        output_dir=config["output_dir"], max_steps=config["steps"], per_device_train_batch_size=8,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=TinyModel(), args=args, train_dataset=Data(),
                                   callbacks=[RayTrainReportCallback()])
    trainer = prepare_trainer(trainer)
    trainer.train()
    return trainer.state.global_step


def test_transformers_callback_reports_checkpoints_on_save_events(tmp_path):
    from trainkeep.huggingface.transformers import TransformersTrainer as TorchTrainer

    run_config = tk.RunConfig(name="hf", storage_path=str(tmp_path / "runs"),
                              checkpoint_config=tk.CheckpointConfig(checkpoint_frequency=3))
    result = TorchTrainer(transformers_loop,
                          train_loop_config={"output_dir": str(tmp_path / "hf_out"), "steps": 7},
                          run_config=run_config).fit()
    steps = [row["metrics"]["step"] for row in result.history if row["checkpoint"]]
    assert steps == [3, 6, 7]  # every 3 steps, and at the end
    assert result.return_value == 7
    assert "loss" in result.history[0]["metrics"]
    listed = [c.path.rsplit("/", 1)[-1] for c, _ in result.best_checkpoints]
    assert listed == [row["checkpoint"] for row in result.history if row["checkpoint"]]
    import transformers

    from trainkeep.huggingface.transformers import RayTrainReportCallback

    with result.checkpoint.as_directory() as ckpt_dir:
        d = os.path.join(ckpt_dir, RayTrainReportCallback.CHECKPOINT_NAME)  # Ray's layout: the folder inside
        assert os.path.exists(os.path.join(d, "trainer_state.json"))
        state = transformers.TrainerState.load_from_json(os.path.join(d, "trainer_state.json"))
        assert state.global_step == 7
        from safetensors.torch import load_file

        assert "layer.weight" in load_file(os.path.join(d, "model.safetensors"))
