"""Port of ray-project/ray doc/source/train/doc_code/asynchronous_validation.py (Ray 2.60), imports swapped to
trainkeep: ``__validation_fn_report_start__`` with the validation function of ``__validation_fn_simple_start__``.

Rank 0 reports each epoch's checkpoint with ``CheckpointUploadMode.ASYNC`` and a ``ValidationTaskConfig`` whose
``fn_kwargs`` name the run and the epoch; the other ranks report ``({}, None)``. The validation function loads
the checkpoint and returns a score, which joins that checkpoint's metrics. The page's model, Ray Data sets and
nested TorchTrainer (GPU validation) are replaced by a pickled "model" and a list of labelled samples; the
``map_batches`` variant needs Ray Data and is not ported.
"""

from __future__ import annotations

import os
import pickle
import tempfile

import trainkeep as train
from trainkeep import ValidationConfig, ValidationTaskConfig

validation_dataset = [(x, x % 3 == 0) for x in range(30)]  # (sample, label): module-level, as on the page


def validation_fn(checkpoint: train.Checkpoint, train_run_name: str, epoch: int) -> dict:
    with checkpoint.as_directory() as checkpoint_dir:
        with open(os.path.join(checkpoint_dir, "model.pt"), "rb") as f:
            threshold = pickle.load(f)["divisor"]
    correct = sum((x % threshold == 0) == label for x, label in validation_dataset)
    return {"score": correct / len(validation_dataset), "validated_run": train_run_name, "validated_epoch": epoch}


def train_func(config: dict) -> None:
    rank = train.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        if rank == 0:
            training_metrics = {"loss": 1.0 / (epoch + 1), "epoch": epoch}
            local_checkpoint_dir = tempfile.mkdtemp()
            with open(os.path.join(local_checkpoint_dir, "model.pt"), "wb") as f:
                pickle.dump({"divisor": epoch + 2}, f)  # epoch 1 learns the right divisor, 3
            train.report(
                training_metrics,
                checkpoint=train.Checkpoint.from_directory(local_checkpoint_dir),
                checkpoint_upload_mode=train.CheckpointUploadMode.ASYNC,
                validation=ValidationTaskConfig(fn_kwargs={
                    "train_run_name": train.get_context().get_experiment_name(),
                    "epoch": epoch,
                }),
            )
        else:
            train.report({}, None)


def test_validation_scores_join_each_checkpoint_s_metrics(tmp_path):
    trainer = train.DataParallelTrainer(
        train_func, train_loop_config={"epochs": 3},
        validation_config=ValidationConfig(fn=validation_fn),
        scaling_config=train.ScalingConfig(num_workers=2),
        run_config=train.RunConfig(name="val-run", storage_path=str(tmp_path), checkpoint_config=train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="max")))
    result = trainer.fit()  # returns once the pending validations are done
    (best, metrics), = result.best_checkpoints
    assert metrics == {"loss": 0.5, "epoch": 1, "score": 1.0, "validated_run": "val-run", "validated_epoch": 1}
    assert best.path.endswith("checkpoint_000001")
    assert result.get_best_checkpoint("score", "max") == best
