"""Reading the launcher's environment (pure), placing ranks on nodes, and init() refusing bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainkeep as tk
from trainkeep._internal.trainer.backends.launched import Hello
from trainkeep._launch_env import read_launch_env
from trainkeep.launch import place

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
            "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "2",
            "TORCHELASTIC_RUN_ID": "job7"}
SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_JOB_ID": "123", "MASTER_ADDR": "node01", "MASTER_PORT": "12345"}
OMPI = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "MASTER_ADDR": "h", "TRAINKEEP_PORT": "4000"}


def test_torchrun_variables() -> None:
    env = read_launch_env(TORCHRUN)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.local_world_size, env.node_rank) == (
        "torchrun", 1, 4, 1, 2, 0)
    assert (env.master_addr, env.port, env.attempt, env.job_id) == ("10.0.0.1", 29501, 2, "job7")


def test_slurm_and_mpirun_variables() -> None:
    env = read_launch_env(SLURM)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.local_world_size, env.node_rank) == (
        "srun", 3, 4, 1, None, 1)
    env = read_launch_env(OMPI)
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.local_world_size, env.node_rank) == (
        "mpirun", 2, 3, 0, 1, None)
    assert env.port == 4000


def test_torchrun_inside_srun_takes_torchrun_ranks() -> None:
    assert read_launch_env({**SLURM, **TORCHRUN}).launcher == "torchrun"


def test_the_port_comes_from_the_argument_then_trainkeep_port_then_master_port() -> None:
    assert read_launch_env({**TORCHRUN, "TRAINKEEP_PORT": "7000"}).port == 7000
    assert read_launch_env({**TORCHRUN, "TRAINKEEP_PORT": "7000"}, port=8000).port == 8000
    assert read_launch_env({**TORCHRUN, "MASTER_PORT": "65535"}).port == 65534


@pytest.mark.parametrize(("change", "names"), [
    ({"WORLD_SIZE": None}, ["WORLD_SIZE", "RANK"]),
    ({"RANK": "4"}, ["RANK=4", "WORLD_SIZE=4"]),
    ({"RANK": "x"}, ["RANK", "'x'"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE", "'0'"]),
    ({"LOCAL_RANK": "2"}, ["LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"]),
    ({"LOCAL_WORLD_SIZE": "5"}, ["LOCAL_WORLD_SIZE=5", "WORLD_SIZE=4"]),
    ({"GROUP_RANK": "-1"}, ["GROUP_RANK", "'-1'"]),
    ({"MASTER_ADDR": None}, ["MASTER_ADDR", "scontrol"]),
    ({"MASTER_PORT": None}, ["MASTER_PORT", "TRAINKEEP_PORT"]),
    ({"MASTER_PORT": "70000"}, ["MASTER_PORT", "65535", "70000"]),
    ({"TRAINKEEP_PORT": "0"}, ["TRAINKEEP_PORT", "'0'"]),
])
def test_bad_or_missing_variables_are_a_config_error_naming_them(change: dict, names: list[str]) -> None:
    environ = {k: v for k, v in {**TORCHRUN, **change}.items() if v is not None}
    with pytest.raises(tk.ConfigError) as info:
        read_launch_env(environ)
    assert isinstance(info.value, ValueError)
    for name in names:
        assert name in str(info.value)


def test_no_launcher_names_the_variables_of_each() -> None:
    with pytest.raises(tk.ConfigError) as info:
        read_launch_env({"MASTER_ADDR": "x"})
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "OMPI_COMM_WORLD_RANK", "DataParallelTrainer"):
        assert name in str(info.value)


@pytest.mark.parametrize("port", [0, 70000, True, "80"])
def test_a_bad_port_argument_is_refused(port: object) -> None:
    with pytest.raises(tk.ConfigError, match="port must be an integer in 1 .. 65535"):
        read_launch_env(TORCHRUN, port=port)  # type: ignore[arg-type]


def test_place_counts_ranks_per_host_when_the_launcher_does_not_say() -> None:
    def hello(rank: int, host: str, local: int | None = None, node: int | None = None) -> Hello:
        return Hello(rank, 5, host, 100 + rank, local, None, node)

    hellos = {0: hello(0, "b"), 1: hello(1, "a"), 2: hello(2, "b"), 3: hello(3, "a"), 4: hello(4, "c", 7, 9)}
    assert place(hellos) == {0: (0, 2, 0), 1: (0, 2, 1), 2: (1, 2, 0), 3: (1, 2, 1), 4: (7, 1, 9)}


def test_init_without_a_launcher_raises_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(tk.ConfigError, match="found no launcher"):
        tk.init(tk.RunConfig(name="run", storage_path=str(tmp_path / "storage")))
    assert not (tmp_path / "storage").exists()
    with pytest.raises(tk.ConfigTypeError, match="run_config must be a trainkeep.RunConfig"):
        tk.init({"name": "run"})  # type: ignore[arg-type]
    tk.shutdown()  # a no-op without init()


def test_session_functions_before_init_say_how_to_join() -> None:
    with pytest.raises(tk.SessionError, match=r"trainkeep.init\(\)"):
        tk.report({"a": 1})
    with pytest.raises(tk.SessionError, match=r"trainkeep.init\(\)"):
        tk.get_context()
