"""Hugging Face Transformers' Trainer inside a trainkeep worker: a checkpoint every 10 steps and at the end.

    .venv/bin/python examples/integrations/transformers_example.py [STORAGE_PATH]
"""

from __future__ import annotations

import os
import sys
import tempfile

import trainkeep as tk
from trainkeep.huggingface.transformers import RayTrainReportCallback, TransformersTrainer, prepare_trainer


def train_loop(config):
    import torch
    import transformers

    class TinyRegressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def forward(self, x, labels=None):
            out = self.layer(x)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            self.x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.x[i].sum().reshape(1)}

    output_dir = os.path.join(tempfile.gettempdir(), f"hf_{tk.get_context().get_experiment_name()}")
    args = transformers.TrainingArguments(output_dir=output_dir, max_steps=config["steps"], logging_steps=5,
                                          per_device_train_batch_size=16, save_strategy="no", report_to=[],
                                          use_cpu=True, disable_tqdm=True)
    trainer = prepare_trainer(transformers.Trainer(model=TinyRegressor(), args=args, train_dataset=Data(),
                                                   callbacks=[RayTrainReportCallback()]))
    checkpoint = tk.get_checkpoint()
    if checkpoint is None:
        trainer.train()
        return
    with checkpoint.as_directory() as d:
        trainer.train(resume_from_checkpoint=d)


if __name__ == "__main__":
    storage = sys.argv[1] if len(sys.argv) > 1 else "demo_runs"
    trainer = TransformersTrainer(
        train_loop, train_loop_config={"steps": 25},
        run_config=tk.RunConfig(name="transformers", storage_path=storage,
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=2, checkpoint_frequency=10)))
    result = trainer.fit()
    print("checkpointed at steps:", [row["metrics"]["step"] for row in result.history if row["checkpoint"]])
    print("kept:", [c.path for c, _ in result.best_checkpoints])
