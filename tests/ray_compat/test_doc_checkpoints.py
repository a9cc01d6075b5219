"""Port of ray-project/ray doc/source/train/doc_code/checkpoints.py (Ray 2.60), imports swapped to trainkeep.

The user guide doc/source/train/user-guides/checkpoints.rst shows these snippets: saving from rank 0 of a DDP
model, restoring after an intentional error, every rank saving its own shard, inspecting a checkpoint, the
three upload modes, ``checkpoint_upload_fn`` and ``get_all_reported_checkpoints``. The Lightning and Transformers
snippets are ported by the framework tests (tests/frameworks); the S3 writer of the NO_UPLOAD snippet is replaced
by a plain file write into the same path. Sizes are the page's (a 4 -> 1 linear model, 100 samples) with fewer
epochs where the page gives no reason for more.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import Checkpoint, ScalingConfig
from trainkeep.torch import TorchTrainer


def torch_restore_train_func(config):
    """__pytorch_restore_start__: resume model, optimizer and epoch; fail once after epoch 1's report."""
    import numpy as np
    import torch
    import torch.nn as nn
    from torch.optim import Adam

    import trainkeep.torch

    X = torch.Tensor(np.random.normal(0, 1, size=(100, 4)))
    Y = torch.Tensor(np.random.uniform(0, 1, size=(100, 1)))
    model = nn.Linear(4, 1)
    optimizer = Adam(model.parameters(), lr=3e-4)
    criterion = nn.MSELoss()
    model = trainkeep.torch.prepare_model(model)
    start_epoch = 0
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            model.module.load_state_dict(torch.load(os.path.join(checkpoint_dir, "model.pt")))
            optimizer.load_state_dict(torch.load(os.path.join(checkpoint_dir, "optimizer.pt")))
            start_epoch = torch.load(os.path.join(checkpoint_dir, "extra_state.pt"))["epoch"] + 1
    for epoch in range(start_epoch, config["num_epochs"]):
        loss = criterion(model.forward(X), Y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
            checkpoint = None
            if train.get_context().get_world_rank() == 0:
                torch.save(model.module.state_dict(), os.path.join(temp_checkpoint_dir, "model.pt"))
                torch.save(optimizer.state_dict(), os.path.join(temp_checkpoint_dir, "optimizer.pt"))
                torch.save({"epoch": epoch}, os.path.join(temp_checkpoint_dir, "extra_state.pt"))
                checkpoint = Checkpoint.from_directory(temp_checkpoint_dir)
            train.report({"loss": loss.item(), "start_epoch": start_epoch}, checkpoint=checkpoint)
        if epoch == 1:
            raise RuntimeError("Intentional error to showcase restoration!")


@pytest.mark.slow  # the workers import a framework: seconds each
def test_pytorch_restore_after_an_intentional_error(tmp_path):
    """__pytorch_restore_start__: with max_failures=1 the run survives the error and resumes at epoch 2.

    It also covers __pytorch_save_start__, whose loop is this one's without the restore and the error (rank 0
    saves the unwrapped DDP model): one torch fit instead of two, as each costs seconds of torch imports.
    """
    torch = pytest.importorskip("torch")
    trainer = TorchTrainer(torch_restore_train_func, train_loop_config={"num_epochs": 4},
                           scaling_config=ScalingConfig(num_workers=2),
                           run_config=train.RunConfig(storage_path=str(tmp_path),
                                                      failure_config=train.FailureConfig(max_failures=1)))
    result = trainer.fit()
    df = result.metrics_dataframe
    assert list(df["start_epoch"]) == [0, 0, 2, 2]  # epochs 0-1 in the first attempt, 2-3 after the restore
    with result.checkpoint.as_directory() as checkpoint_dir:
        assert torch.load(os.path.join(checkpoint_dir, "extra_state.pt")) == {"epoch": 3}
        assert torch.load(os.path.join(checkpoint_dir, "optimizer.pt"))["state"]  # Adam's moments were saved
        state = torch.load(os.path.join(checkpoint_dir, "model.pt"))
    assert sorted(state) == ["bias", "weight"]  # no "module." prefix: the model was unwrapped
    assert tuple(state["weight"].shape) == (1, 4)


def distributed_train_func(config):
    """__distributed_checkpointing_start__: every rank saves its own shard into the same checkpoint."""
    rank = train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
        with open(os.path.join(temp_checkpoint_dir, f"model-rank={rank}.pt"), "wb") as f:
            pickle.dump({"rank": rank}, f)
        train.report({"loss": 0.0}, checkpoint=Checkpoint.from_directory(temp_checkpoint_dir))


def test_distributed_checkpointing_holds_every_rank_s_file(tmp_path):
    """__distributed_checkpointing_end__: "The checkpoint will contain: model-rank=0.pt, model-rank=1.pt"."""
    result = train.DataParallelTrainer(distributed_train_func, scaling_config=ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    with result.checkpoint.as_directory() as d:
        assert sorted(n for n in os.listdir(d) if not n.startswith(".")) == ["model-rank=0.pt", "model-rank=1.pt"]
        assert pickle.load(open(os.path.join(d, "model-rank=1.pt"), "rb")) == {"rank": 1}


def test_inspect_checkpoint_with_as_directory_and_to_directory(tmp_path):
    """__inspect_checkpoint_example_start__: a Checkpoint references a local directory holding model.pt."""
    example_checkpoint_dir = tmp_path / "test-checkpoint"
    example_checkpoint_dir.mkdir()
    example_checkpoint_dir.joinpath("model.pt").touch()
    checkpoint = Checkpoint.from_directory(example_checkpoint_dir)
    with checkpoint.as_directory() as checkpoint_dir:
        assert Path(checkpoint_dir).joinpath("model.pt").exists()
    checkpoint_dir = checkpoint.to_directory()
    assert Path(checkpoint_dir).joinpath("model.pt").exists()


def upload_modes_train_fn(config):
    """__checkpoint_upload_mode_sync_start__ then __checkpoint_upload_mode_async_start__, one report each."""
    with tempfile.TemporaryDirectory() as tmpdir:
        Path(tmpdir, "state.txt").write_text("sync")
        train.report({"mode": "sync"}, checkpoint=Checkpoint.from_directory(tmpdir),
                     checkpoint_upload_mode=train.CheckpointUploadMode.SYNC)
        assert os.path.exists(tmpdir)  # SYNC does not delete the source directory
    tmpdir = tempfile.mkdtemp()
    Path(tmpdir, "state.txt").write_text("async")
    train.report({"mode": "async"}, checkpoint=Checkpoint.from_directory(tmpdir),
                 checkpoint_upload_mode=train.CheckpointUploadMode.ASYNC)
    return tmpdir


def test_sync_and_async_upload_modes(tmp_path):
    """SYNC keeps the temporary directory; ASYNC deletes the mkdtemp() directory once uploaded (its default)."""
    result = train.DataParallelTrainer(upload_modes_train_fn, scaling_config=ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    assert [m["mode"] for _, m in result.best_checkpoints] == ["sync", "async"]
    with result.checkpoint.as_directory() as d:
        assert Path(d, "state.txt").read_text() == "async"
    assert not os.path.exists(result.return_value)


def no_upload_train_fn(config):
    """__checkpoint_upload_mode_no_upload_start__: write straight into the run, then report it as it is."""
    for epoch in range(config["num_epochs"]):
        storage_context = train.get_context().get_storage()
        checkpoint_path = storage_context.build_checkpoint_path_from_name(str(epoch))
        rank = train.get_context().get_world_rank()
        os.makedirs(checkpoint_path, exist_ok=True)
        Path(checkpoint_path, f"shard-{rank}.pt").write_text(f"epoch {epoch} rank {rank}")
        checkpoint = Checkpoint(checkpoint_path)
        train.report({"epoch": epoch}, checkpoint=checkpoint,
                     checkpoint_upload_mode=train.CheckpointUploadMode.NO_UPLOAD)


def test_no_upload_registers_what_the_workers_wrote_into_the_run(tmp_path):
    result = train.DataParallelTrainer(no_upload_train_fn, train_loop_config={"num_epochs": 2},
                                       scaling_config=ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    assert [os.path.basename(c.path) for c, _ in result.best_checkpoints] == ["0", "1"]
    with result.checkpoint.as_directory() as d:
        assert Path(d, "shard-1.pt").read_text() == "epoch 1 rank 1"


def upload_fn_train_fn(config):
    """__checkpoint_upload_fn_start__, with the save going to the directory the upload fn is given.

    The page's version, which saves into a run directory of its own naming, is pinned in test_doc_differences.py.
    """
    rank = train.get_context().get_world_rank()
    for epoch in range(config["num_epochs"]):
        local = tempfile.mkdtemp()
        Path(local, f"shard-{rank}.pt").write_text(f"epoch {epoch}")

        def wait_async_save(checkpoint, checkpoint_dir_name):
            storage_context = train.get_context().get_storage()
            checkpoint_path = storage_context.build_checkpoint_path_from_name(checkpoint_dir_name)
            os.makedirs(checkpoint_path, exist_ok=True)
            for name in os.listdir(checkpoint.path):
                shutil.copy(os.path.join(checkpoint.path, name), checkpoint_path)
            return Checkpoint(checkpoint_path)

        train.report({"epoch": epoch}, checkpoint=Checkpoint.from_directory(local),
                     checkpoint_upload_mode=train.CheckpointUploadMode.ASYNC,
                     checkpoint_upload_fn=wait_async_save)


def test_checkpoint_upload_fn_saving_into_the_directory_it_is_given(tmp_path):
    result = train.DataParallelTrainer(upload_fn_train_fn, train_loop_config={"num_epochs": 2},
                                       scaling_config=ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    assert [m["epoch"] for _, m in result.best_checkpoints] == [0, 1]
    with result.checkpoint.as_directory() as d:
        assert sorted(n for n in os.listdir(d) if not n.startswith(".")) == ["shard-0.pt", "shard-1.pt"]
        assert Path(d, "shard-1.pt").read_text() == "epoch 1"


def validate(checkpoint):
    with checkpoint.as_directory() as d:
        epoch = int(Path(d, "epoch.txt").read_text())
    return {"val/score": 10 + epoch}


def all_reported_train_fn(config):
    """__get_all_reported_checkpoints_example_start__: COMMITTED, then the default VALIDATED."""
    for epoch in range(2):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "epoch.txt").write_text(str(epoch))
            train.report({"train/loss": 0.1}, checkpoint=Checkpoint.from_directory(d), validation=True)
    committed_checkpoints = train.get_all_reported_checkpoints(
        consistency_mode=train.CheckpointConsistencyMode.COMMITTED)
    validated_checkpoints = train.get_all_reported_checkpoints()
    return ([len(committed_checkpoints)],
            [(r.status.name, r.metrics) for r in validated_checkpoints])


def test_get_all_reported_checkpoints_waits_for_validations(tmp_path):
    result = train.DataParallelTrainer(all_reported_train_fn, scaling_config=ScalingConfig(num_workers=2),
                                       validation_config=train.ValidationConfig(fn=validate),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    committed, validated = result.return_value
    assert committed == [2]
    assert validated == [("VALIDATED", {"train/loss": 0.1, "val/score": 10}),
                         ("VALIDATED", {"train/loss": 0.1, "val/score": 11})]
