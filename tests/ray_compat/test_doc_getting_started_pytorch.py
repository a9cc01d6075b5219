"""Port of ray-project/ray doc/source/train/doc_code/getting_started_pytorch.py (Ray 2.60), imports swapped to
trainkeep.

getting_started: the model goes through ``prepare_model``, the data loader through ``prepare_data_loader``, and
every rank saves ``model.state_dict()`` under the same file name and reports it each epoch. The page trains a
ResNet-18 on FashionMNIST (a download) with ``use_gpu=True``; here a small convolutional model learns 64
synthetic 28x28 images, on CPU, for 2 epochs instead of 10.

doc_code/metric_logging.py (the monitoring-logging guide's torchmetrics example) has the same shape: every rank
reports the wrapped model's state and its metrics each epoch. It is not run here: importing torchmetrics costs
each worker seconds more than torch does; what it checks (rank 0's metrics, one shared file) is checked above.
"""

from __future__ import annotations

import os
import tempfile

import pytest

import trainkeep
from trainkeep import Checkpoint, ScalingConfig
from trainkeep.torch import TorchTrainer


def train_func(config):
    import torch
    from torch.nn import CrossEntropyLoss
    from torch.optim import Adam
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, kernel_size=7, stride=2, padding=3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10))
    # [1] Prepare model.
    model = trainkeep.torch.prepare_model(model)
    criterion = CrossEntropyLoss()
    optimizer = Adam(model.parameters(), lr=0.001)
    # Data (the page's FashionMNIST, normalised to [-1, 1]: random images and labels of the same shapes)
    generator = torch.Generator().manual_seed(1)
    train_data = TensorDataset(torch.rand(64, 1, 28, 28, generator=generator) * 2 - 1,
                               torch.randint(0, 10, (64,), generator=generator))
    train_loader = DataLoader(train_data, batch_size=16, shuffle=True)
    # [2] Prepare dataloader.
    train_loader = trainkeep.torch.prepare_data_loader(train_loader)
    batches = 0
    for _epoch in range(config["epochs"]):
        for images, labels in train_loader:
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batches += 1
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            torch.save(model.state_dict(), os.path.join(checkpoint_dir, "model.checkpoint"))
            # [3] Report metrics and checkpoint.
            trainkeep.report({"loss": loss.item(), "batches": batches},
                             checkpoint=Checkpoint.from_directory(checkpoint_dir))


@pytest.mark.slow  # the workers import a framework: seconds each
def test_getting_started_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    # [4] Configure scaling and resource requirements (the page's use_gpu=True: CPU here).
    scaling_config = ScalingConfig(num_workers=2, use_gpu=False)
    # [5] Launch distributed training job.
    trainer = TorchTrainer(train_func, train_loop_config={"epochs": 2}, scaling_config=scaling_config,
                           run_config=trainkeep.RunConfig(storage_path=str(tmp_path)))
    result = trainer.fit()
    assert len(result.metrics_dataframe) == 2
    assert result.metrics["batches"] == 4  # 2 epochs of this rank's half (32 images, batches of 16)
    with result.checkpoint.as_directory() as d:
        # both ranks saved the same DDP state under the same name: one file
        assert sorted(n for n in os.listdir(d) if not n.startswith(".")) == ["model.checkpoint"]
        state = torch.load(os.path.join(d, "model.checkpoint"))
    assert all(key.startswith("module.") for key in state)  # the page saves the wrapped model's state
