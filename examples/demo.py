"""The main demo: a small PyTorch model trained with TorchTrainer on 2 worker processes, surviving a crash.

An MLP learns a synthetic regression task with DistributedDataParallel (gloo, CPU). Every epoch rank 0 reports
a checkpoint (model + optimizer) scored by validation loss; the run keeps the best two (plus the latest).
Every third epoch takes an overshooting step, so validation loss goes up and down and retention has choices.
At epoch 3, worker rank 1 kills itself with SIGKILL once; FailureConfig(max_failures=1) restarts both workers
from the latest committed checkpoint and the run finishes as if nothing happened.

    make demo          # or: .venv/bin/python examples/demo.py [RUN_DIR]   (the run directory is started afresh)
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

import trainkeep as tk
from trainkeep._internal.core.retention import Record, decide
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.storage import LocalStorage

EPOCHS = 8
CRASH_RANK, CRASH_EPOCH = 1, 3


def train_loop(config: dict[str, Any]) -> None:
    """Train the MLP; resume from the latest checkpoint; report a checkpoint every epoch."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainkeep.torch import prepare_data_loader, prepare_model

    torch.set_num_threads(1)
    rank = tk.get_context().get_world_rank()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 16, generator=gen)
    y = torch.sin(x[:, :4].sum(1, keepdim=True)) + 0.5 * x[:, 4:8].sum(1, keepdim=True)
    x_val, y_val = x[3584:], y[3584:]
    loader = prepare_data_loader(DataLoader(TensorDataset(x[:3584], y[:3584]), batch_size=64, shuffle=True))
    torch.manual_seed(0)
    model = prepare_model(torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if (checkpoint := tk.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"))
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
        if rank == 0:
            print(f"[rank 0] resumed from {os.path.basename(checkpoint.path)}: continuing at epoch {start}")

    for epoch in range(start, config["epochs"]):
        if rank == CRASH_RANK and epoch == CRASH_EPOCH and not os.path.exists(config["crash_marker"]):
            open(config["crash_marker"], "w").close()
            print(f"[rank {rank}] simulating a crash at epoch {epoch}: SIGKILL to myself", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        loader.sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = 0.3 if epoch % 3 == 2 else 0.05  # every third epoch overshoots
        for xb, yb in loader:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
        with torch.no_grad():
            val_loss = torch.nn.functional.mse_loss(model.module(x_val), y_val).item()
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                           os.path.join(d, "state.pt"))
                checkpoint = tk.Checkpoint.from_directory(d)
                print(f"[rank 0] epoch {epoch}  val_loss {val_loss:.4f}", flush=True)
            tk.report({"epoch": epoch, "val_loss": val_loss}, checkpoint=checkpoint)


def print_kept(result: tk.Result, config: tk.CheckpointConfig) -> None:
    """Print the checkpoints left on storage and why retention keeps each one."""
    state = read_run(LocalStorage(), result.path)
    records = [Record(c.name, c.round, c.metrics) for c in state.index.checkpoints]
    decision = decide(records, config)
    print(f"\n{'checkpoint':<20}{'epoch':>6}{'val_loss':>10}   why kept")
    for record in decision.keep:
        print(f"{record.name:<20}{record.metrics['epoch']:>6}{record.metrics['val_loss']:>10.4f}   "
              f"{decision.reasons[record.name]}")
    best, metrics = result.best_checkpoints[-1]
    print(f"\nbest: {os.path.basename(best.path)} (epoch {metrics['epoch']}, val_loss {metrics['val_loss']:.4f})")
    print(f"rounds in the history: {len(result.metrics_dataframe)} (each epoch once, the crashed round discarded)")


def main(run_dir: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trainkeep._internal.engine.manager").setLevel(logging.WARNING)  # one line per commit is too chatty here
    run_dir = os.path.abspath(run_dir)
    marker = run_dir + ".crashed"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own run: start afresh each time
    if os.path.exists(marker):
        os.remove(marker)
    checkpoint_config = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                            checkpoint_score_order="min")
    trainer = tk.torch.TorchTrainer(
        train_loop,
        train_loop_config={"epochs": EPOCHS, "crash_marker": marker},
        scaling_config=tk.ScalingConfig(num_workers=2),
        run_config=tk.RunConfig(name=os.path.basename(run_dir), storage_path=os.path.dirname(run_dir),
                                checkpoint_config=checkpoint_config,
                                failure_config=tk.FailureConfig(max_failures=1)),
    )
    started = time.perf_counter()
    result = trainer.fit()
    print(f"\nfit() took {time.perf_counter() - started:.1f} s; run directory: {result.path}")
    print_kept(result, checkpoint_config)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("demo_runs", "torch"))
