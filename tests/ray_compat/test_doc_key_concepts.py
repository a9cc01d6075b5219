"""Port of ray-project/ray doc/source/train/doc_code/key_concepts.py (Ray 2.60), imports swapped to trainkeep.

The page "Key concepts" / "Inspecting training results" (doc/source/train/user-guides/results.rst includes the same
snippets): a run whose two workers each write ``model.pt`` and report it, the RunConfig and CheckpointConfig
examples, what ``Result`` offers after ``fit()``, and the error handling of a failed run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import DataParallelTrainer


def train_fn(config):
    # every worker writes an (empty) model.pt and reports it, as on the doc page
    for i in range(3):
        with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
            Path(temp_checkpoint_dir).joinpath("model.pt").touch()
            train.report({"loss": i}, checkpoint=train.Checkpoint.from_directory(temp_checkpoint_dir))


def scored_train_fn(config):
    for accuracy in config["accuracies"]:
        with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
            Path(temp_checkpoint_dir, "model.pt").write_text(f"acc={accuracy}")
            train.report({"mean_accuracy": accuracy},
                         checkpoint=train.Checkpoint.from_directory(temp_checkpoint_dir))


def error_train_fn(config):
    raise RuntimeError("Simulated training error")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> train.Result:
    """Run the page's trainer once (two workers, three reports) under the page's RunConfig example."""
    storage_path = str(tmp_path_factory.mktemp("ray_results"))
    run_config = train.RunConfig(name="my_train_run", storage_path=storage_path)
    trainer = DataParallelTrainer(train_fn, scaling_config=train.ScalingConfig(num_workers=2), run_config=run_config)
    return trainer.fit()


def test_run_config_puts_the_run_under_storage_path_slash_name(fitted):
    """__run_config_start__: "The experiment results will be saved to: storage_path/name"."""
    assert os.path.basename(fitted.path) == "my_train_run"
    assert os.path.isdir(fitted.path)


def test_result_metrics_and_dataframe(fitted):
    """__result_metrics_start__ and __result_dataframe_start__: the last metrics, and min(df["loss"])."""
    assert fitted.metrics["loss"] == 2
    df = fitted.metrics_dataframe
    assert min(df["loss"]) == 0
    assert list(df["loss"]) == [0, 1, 2]


def test_result_checkpoint_and_best_checkpoints(fitted):
    """__result_checkpoint_start__ and __result_best_checkpoint_start__: load the last and the min-loss checkpoint.

    Both workers wrote the same (empty) ``model.pt``: the round is accepted and the file is stored once.
    """
    with fitted.checkpoint.as_directory() as tmpdir:  # (our manifest, a dot file, lies beside it)
        assert sorted(n for n in os.listdir(tmpdir) if not n.startswith(".")) == ["model.pt"]
    losses = [metrics["loss"] for _, metrics in fitted.best_checkpoints]
    assert losses == [0, 1, 2]
    best_checkpoint = min(fitted.best_checkpoints, key=lambda checkpoint: checkpoint[1]["loss"])[0]
    with best_checkpoint.as_directory() as tmpdir:
        assert os.path.exists(os.path.join(tmpdir, "model.pt"))
    assert best_checkpoint != fitted.checkpoint


def test_result_path_filesystem_and_restore(fitted):
    """__result_path_start__ and __result_restore_start__: (filesystem, path), then Result.from_path(path)."""
    result_path: str = fitted.path
    assert fitted.filesystem.exists(os.path.join(result_path, "checkpoint_000002"))
    restored_result = train.Result.from_path(result_path)
    assert restored_result.metrics["loss"] == 2
    assert restored_result.checkpoint == fitted.checkpoint
    assert [m["loss"] for _, m in restored_result.best_checkpoints] == [0, 1, 2]


def test_checkpoint_config_examples(tmp_path):
    """__checkpoint_config_start__: keep the 2 most recent; keep the 2 best by "mean_accuracy" (max).

    Both configs run in one trainer each, with the page's two-worker scaling; the page's S3 storage is local
    here (S3 is covered by test_doc_persistent_storage.py).
    """
    recent = train.RunConfig(name="recent", storage_path=str(tmp_path),
                             checkpoint_config=train.CheckpointConfig(num_to_keep=2))
    best = train.RunConfig(name="best", storage_path=str(tmp_path), checkpoint_config=train.CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute="mean_accuracy", checkpoint_score_order="max"))
    config = {"accuracies": [0.5, 0.9, 0.7, 0.1]}
    kept = {}
    for run_config in (recent, best):
        result = DataParallelTrainer(scored_train_fn, train_loop_config=config, run_config=run_config,
                                     scaling_config=train.ScalingConfig(num_workers=2)).fit()
        kept[run_config.name] = sorted(n for n in os.listdir(result.path) if n.startswith("checkpoint_"))
        if run_config is best:
            assert [m["mean_accuracy"] for _, m in result.best_checkpoints] == [0.7, 0.9]
    assert kept["recent"] == ["checkpoint_000002", "checkpoint_000003"]
    # the two best (0.9, 0.7) plus the latest (0.1), which is never deleted, as in Ray
    assert kept["best"] == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]


def test_result_error_handling(tmp_path):
    """__result_error_start__: fit() raises TrainingFailedError; a WorkerGroupError names the failed ranks."""
    trainer = DataParallelTrainer(error_train_fn, scaling_config=train.ScalingConfig(num_workers=1),
                                  run_config=train.RunConfig(storage_path=str(tmp_path)))
    with pytest.raises(train.TrainingFailedError) as info:
        trainer.fit()
    e = info.value
    assert isinstance(e, train.WorkerGroupError)
    assert list(e.worker_failures) == [0]
    assert isinstance(e.worker_failures[0], RuntimeError)
    assert str(e.worker_failures[0]) == "Simulated training error"
