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
