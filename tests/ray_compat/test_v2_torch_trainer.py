"""Port of ray-project/ray python/ray/train/v2/tests/test_torch_trainer.py (Ray 2.60), imports swapped.

Ray's test imports its linear-regression example (``ray.train.examples.pytorch.torch_linear_example``); this
port writes the same kind of loop itself: a linear model fitted to ``y = 2x + 1`` through ``prepare_model`` and
``prepare_data_loader``, a report per epoch, and the per-epoch results returned. Ray's ``num_workers=1`` case
is left out: each worker pays for importing torch, and two workers show the same and more.
"""

from __future__ import annotations

import pytest

import trainkeep as train
from trainkeep import RunConfig, ScalingConfig
from trainkeep.torch import TorchTrainer


def linear_train_func(config):
    """Fit a small linear model with DDP; return one {"loss": ...} per epoch."""
    import torch

    import trainkeep.torch

    torch.manual_seed(0)
    x = torch.linspace(0, 1, 64).unsqueeze(1)
    dataset = torch.utils.data.TensorDataset(x, 2 * x + 1)
    loader = trainkeep.torch.prepare_data_loader(
        torch.utils.data.DataLoader(dataset, batch_size=config["batch_size"], shuffle=True))
    model = trainkeep.torch.prepare_model(torch.nn.Sequential(
        torch.nn.Linear(1, config["hidden_size"]), torch.nn.Linear(config["hidden_size"], 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    loss_fn = torch.nn.MSELoss()
    results = []
    for _ in range(config["epochs"]):
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(inputs), labels).backward()
            optimizer.step()
        with torch.no_grad():
            loss = loss_fn(model(x), 2 * x + 1).item()
        train.report({"loss": loss})
        results.append({"loss": loss})
    return results


def test_minimal(tmp_path, monkeypatch):
    """Covers test_minimal: a TorchTrainer with nothing but a function (default storage under HOME)."""
    monkeypatch.setenv("HOME", str(tmp_path))

    def train_func():
        pass

    TorchTrainer(train_func).fit()


@pytest.mark.parametrize("num_workers", [2])
def test_torch_linear(tmp_path, num_workers):
    """Covers test_torch_linear: the loss falls over 3 epochs on 1 and on 2 workers."""
    epochs = 3

    def train_func(config):
        result = linear_train_func(config)
        assert len(result) == epochs
        assert result[-1]["loss"] < result[0]["loss"]

    config = {"lr": 1e-2, "hidden_size": 1, "batch_size": 4, "epochs": epochs}
    result = TorchTrainer(train_loop_per_worker=train_func, train_loop_config=config,
                          scaling_config=ScalingConfig(num_workers=num_workers),
                          run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert len(result.metrics_dataframe) == epochs
