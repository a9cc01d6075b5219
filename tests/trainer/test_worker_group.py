"""The controller over the WorkerGroup interface alone: a scripted in-test group, no processes.

The fake proves the seam (the controller needs nothing of LocalWorkerGroup); the real processes are covered by
every other test in this folder.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trainkeep as tk
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer.backends.local import LocalWorkerGroup
from trainkeep._internal.trainer.controller import Controller
from trainkeep._internal.trainer.executors import local_thread_env
from trainkeep._internal.trainer.failures import AttemptFailed
from trainkeep._internal.trainer.group import Event, Exited, Message, WorkerGroup

Script = Callable[[int, Any], list[Any]]  # (rank, message from the driver) -> what the rank answers


class ScriptedGroup(WorkerGroup):
    """Ranks that answer the driver's messages from a script; a body ``Exited`` ends the rank."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sent: list[tuple[int, Any]] = []
        self._events: list[Event] = []
        self._ranks = 0
        self.killed = False

    def start(self, envs: list[dict[str, str]]) -> None:
        self._ranks = len(envs)
        for rank in range(self._ranks):
            self._queue(rank, self.script(rank, None))

    @property
    def world_size(self) -> int:
        return self._ranks

    def send(self, rank: int, message: Any) -> None:
        self.sent.append((rank, message))
        self._queue(rank, self.script(rank, message))

    def _queue(self, rank: int, bodies: list[Any]) -> None:
        for body in bodies:
            self._events.append(body if isinstance(body, Exited) else Message(rank, body))

    def wait(self, timeout: float | None) -> list[Event]:
        events, self._events = self._events, []
        return events

    def describe(self, rank: int) -> str:
        return f"scripted rank {rank}"

    def join(self, timeout_s: float) -> None:
        pass

    def kill(self) -> None:
        self.killed = True


def _two_rounds(run_dir: Path, die: bool = False) -> Script:
    """Rank 0 reports a checkpoint (SYNC) then metrics only; rank 1 reports nothing of its own."""

    done = [0, 0]  # the Done messages each rank received

    def script(rank: int, message: Any) -> list[Any]:
        if isinstance(message, p.Done):
            done[rank] += 1
        if message is None:
            files = ["model.txt"] if rank == 0 else None
            return [p.Announce({"epoch": 0} if rank == 0 else None, rank == 0, files, None, "SYNC")]
        if isinstance(message, p.Dest):  # rank 0 "uploads" its file into the staged directory
            path = os.path.join(message.path, "model.txt")
            Path(path).write_text("weights")
            return [p.Uploaded(0, [FileEntry("model.txt", 7, _sha256(path))])]
        if isinstance(message, p.Done) and done[rank] == 1 and rank == 1 and die:
            return [Exited(1, -9)]
        if isinstance(message, p.Done) and done[rank] == 1:
            return [p.Announce({"epoch": 1} if rank == 0 else None, False, None, None, "SYNC")]
        if isinstance(message, p.Done):
            return [p.Finished(pickle.dumps("value") if rank == 0 else None), Exited(rank, 0)]
        raise AssertionError(f"unexpected {message!r}")

    return script


def _sha256(path: str) -> str:
    from trainkeep._internal.storage import LocalStorage

    return LocalStorage().checksum(path)[1]


def test_the_controller_commits_rounds_over_any_worker_group(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "run"))
    group = ScriptedGroup(_two_rounds(tmp_path))
    group.start([{}, {}])
    assert Controller(manager, group, 2, 5.0, None).run() == "value"
    assert [r.name for r in manager.records()] == ["checkpoint_000000"]
    assert [row["metrics"]["epoch"] for row in manager.history] == [0, 1]
    dests = [message for rank, message in group.sent if isinstance(message, p.Dest)]
    assert dests == [p.Dest(str(tmp_path / "run" / "checkpoint_000000"), ["model.txt"], 0)]  # each path to one rank
    manager.close()
    assert tk.Result.from_path(str(tmp_path / "run")).checkpoint is not None


def test_a_death_reported_by_the_group_fails_the_attempt_naming_the_worker(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "run"))
    group = ScriptedGroup(_two_rounds(tmp_path, die=True))
    group.start([{}, {}])
    controller = Controller(manager, group, 2, 5.0, None)
    with pytest.raises(AttemptFailed) as info:
        controller.run()
    assert info.value.retryable
    assert str(info.value) == "RuntimeError: worker rank 1 (scripted rank 1) was killed by signal SIGKILL while training"
    controller.discard()
    assert [r.name for r in manager.records()] == ["checkpoint_000000"]  # committed before the death
    manager.close()


def test_the_local_group_implements_the_interface_and_names_its_processes() -> None:
    group = LocalWorkerGroup()
    assert isinstance(group, WorkerGroup)
    group.start([{}])
    try:
        assert group.world_size == 1 and group.describe(0) == f"pid {group.pids[0]}"
    finally:
        group.kill()
    group.kill()  # idempotent
    events = group.wait(0.1)
    assert events == []


def test_the_trainer_package_imports_nothing_above_it() -> None:
    """trainer/ (the worker half of the protocol included) imports neither the package root nor a module that
    imports trainer/ back; the public session functions stay reachable from the root."""
    import ast

    import trainkeep._internal.trainer

    root = Path(trainkeep._internal.trainer.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(alias.name == "trainkeep" for alias in node.names):
                offenders.append(f"{path.name}: import trainkeep")
            elif isinstance(node, ast.ImportFrom) and node.module in ("trainkeep", "trainkeep._internal.trainer.session"):
                offenders.append(f"{path.name}: from {node.module} import ...")
    assert offenders == []
    assert (tk.report, tk.get_checkpoint, tk.get_context) == (
        trainkeep._internal.trainer.session.report, trainkeep._internal.trainer.session.get_checkpoint,
        trainkeep._internal.trainer.session.get_context)


def test_resources_per_worker_cpu_sets_each_worker_s_thread_counts(loop_config, make_run) -> None:
    import trainer_loops as loops

    tk.DataParallelTrainer(loops.probe_threads, train_loop_config=loop_config,
                           scaling_config=tk.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 3.7}),
                           run_config=make_run()).fit()
    lines = sorted(loops.read_log(loop_config["log"]))
    assert [json.loads(line) for line in lines] == [[rank, "3", "3", "3", "3"] for rank in (0, 1)]


@pytest.mark.parametrize("resources", [{"GPU": 1}, {"CPU": 1, "memory": 1e9}, {"accelerator_type:A100": 1}])
def test_resources_the_local_executor_cannot_honour_are_refused_naming_the_executors_that_do(resources) -> None:
    scaling = tk.ScalingConfig(num_workers=1, use_gpu="GPU" in resources, resources_per_worker=resources)
    with pytest.raises(tk.ConfigError, match=r"resources_per_worker=.*honours only 'CPU'.*use_gpu=True.*'ray'"):
        tk.DataParallelTrainer(lambda: None, scaling_config=scaling)
    assert local_thread_env(tk.ScalingConfig(resources_per_worker={"CPU": 0})) == {}
    assert local_thread_env(tk.ScalingConfig(resources_per_worker={"CPU": 0.5}))["OMP_NUM_THREADS"] == "1"


def test_a_ctrl_c_during_event_handling_is_delivered_after_it_not_inside() -> None:
    import signal

    from trainkeep._internal.trainer.interrupt import deferred_sigint

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("still running after the signal")  # a commit here would not be cut short
    assert steps == ["still running after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred_sigint():
        steps.append("no signal: nothing raised")
    assert len(steps) == 2
