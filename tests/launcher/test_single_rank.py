"""trainkeep.init() with a world of one rank, in this process: the whole path without a launcher's processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher_helpers import free_port_pair

import trainkeep as tk


@pytest.fixture
def one_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Set the variables torchrun sets for a world of one, on a free loopback port; shut down afterwards."""
    for name in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TORCHELASTIC_RESTART_COUNT", "TRAINKEEP_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port_pair())}.items():
        monkeypatch.setenv(name, value)
    yield
    tk.shutdown()


def test_report_get_checkpoint_and_context_work_as_in_a_trainer(tmp_path: Path, one_rank: None) -> None:
    config = tk.RunConfig(name="run", storage_path=str(tmp_path / "storage"),
                          checkpoint_config=tk.CheckpointConfig(num_to_keep=1))
    context = tk.init(config)
    assert context is tk.get_context()
    assert (context.get_world_rank(), context.get_local_rank(), context.get_world_size(),
            context.get_local_world_size(), context.get_node_rank()) == (0, 0, 1, 1, 0)
    assert context.get_experiment_name() == "run" and tk.get_checkpoint() is None
    with pytest.raises(tk.SessionError, match="already called"):
        tk.init(config)
    for epoch in range(3):
        source = tmp_path / f"src{epoch}"
        source.mkdir()
        (source / "w.txt").write_text(str(epoch))
        tk.report({"epoch": epoch}, checkpoint=tk.Checkpoint.from_directory(str(source)))
        latest = tk.get_checkpoint()
        assert latest is not None and latest.path.endswith(f"checkpoint_{epoch:06d}")
    with pytest.raises(tk.InvalidMetricsError):  # bad input: refused before anything is sent or written
        tk.report({"epoch": object()})
    tk.report({"epoch": 3})  # the session goes on: nothing of the refused report reached rank 0
    tk.shutdown()
    tk.shutdown()  # idempotent
    with pytest.raises(tk.SessionError):
        tk.get_context()
    result = tk.Result.from_path(str(tmp_path / "storage" / "run"))
    assert [h["metrics"]["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert sorted(n for n in os.listdir(result.path) if n.startswith("checkpoint_")) == ["checkpoint_000002"]
    # a second session on the same run resumes it
    tk.init(config)
    start = tk.get_checkpoint()
    assert start is not None and (Path(start.path) / "w.txt").read_text() == "2"
    tk.report({"epoch": 4})
    tk.shutdown()
    assert [h["metrics"]["epoch"] for h in tk.Result.from_path(result.path).history] == [0, 1, 2, 3, 4]


def test_a_live_writer_on_the_run_is_refused_at_init(tmp_path: Path, one_rank: None) -> None:
    storage = str(tmp_path / "storage")
    with tk.CheckpointManager(f"{storage}/run"):
        with pytest.raises(tk.RunLockedError):
            tk.init(tk.RunConfig(name="run", storage_path=storage))
    with pytest.raises(tk.SessionError):
        tk.report({"a": 1})


class Recorder(tk.UserCallback):
    """Record what the driver's callback hooks were told (rank 0's controller runs in this process)."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, list[dict], str | None]] = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.reports.append((run_context.scaling_config.num_workers, metrics,
                             checkpoint.path.rsplit("/", 1)[1] if checkpoint else None))


def validate_by_file(checkpoint: tk.Checkpoint) -> dict:
    """Validate by reading the score the checkpoint's own file holds (the reported one is the opposite)."""
    with checkpoint.as_directory() as d:
        return {"score": float((Path(d) / "score.txt").read_text())}


def test_callbacks_and_validations_run_on_rank_0_as_in_a_trainer(tmp_path: Path, one_rank: None) -> None:
    recorder = Recorder()
    config = tk.RunConfig(name="run", storage_path=str(tmp_path / "storage"), callbacks=[recorder],
                          checkpoint_config=tk.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score"))
    tk.init(config, validation_config=tk.ValidationConfig(validate_by_file))
    # reported 9, 1, 5 would keep checkpoint 0; the validations say 1, 9, 5, so checkpoint 1 is the best
    for epoch, (reported, validated) in enumerate([(9, 1), (1, 9), (5, 5)]):
        source = tmp_path / f"src{epoch}"
        source.mkdir()
        (source / "score.txt").write_text(str(validated))
        tk.report({"epoch": epoch, "score": reported}, checkpoint=tk.Checkpoint.from_directory(str(source)),
                  validation=True)
    tk.report({"epoch": 3})
    tk.shutdown()  # returns once the validations have run
    assert recorder.reports == [(1, [{"epoch": 0, "score": 9}], "checkpoint_000000"),
                                (1, [{"epoch": 1, "score": 1}], "checkpoint_000001"),
                                (1, [{"epoch": 2, "score": 5}], "checkpoint_000002"),
                                (1, [{"epoch": 3}], None)]
    result = tk.Result.from_path(str(tmp_path / "storage" / "run"))
    [(best, metrics)] = result.best_checkpoints
    assert best.path.endswith("checkpoint_000001") and metrics["score"] == 9.0
    assert sorted(n for n in os.listdir(result.path) if n.startswith("checkpoint_")) == [
        "checkpoint_000001", "checkpoint_000002"]  # the best by validation, and the latest


def test_validation_needs_a_validation_config_and_a_bad_one_is_refused_before_any_write(
        tmp_path: Path, one_rank: None) -> None:
    storage = tmp_path / "storage"
    with pytest.raises(tk.ConfigTypeError, match="validation_config must be None or a trainkeep.ValidationConfig"):
        tk.init(tk.RunConfig(name="run", storage_path=str(storage)), validation_config=validate_by_file)
    assert not storage.exists()
    tk.init(tk.RunConfig(name="run", storage_path=str(storage)))
    source = tmp_path / "src"
    source.mkdir()
    (source / "score.txt").write_text("1")
    with pytest.raises(ValueError, match="validation_config"):
        tk.report({"score": 1}, checkpoint=tk.Checkpoint.from_directory(str(source)), validation=True)
