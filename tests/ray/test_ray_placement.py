"""The Ray executor's pure parts, without a cluster: bundles, the fit check, ranks from nodes, the torch
environment (GPU devices included), and the executor choice."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

import trainkeep as tk
from trainkeep._internal.trainer.backends.placement import (
    Landing,
    assign_ranks,
    check_fits,
    fitting_workers,
    visible_devices,
    worker_bundle,
)
from trainkeep._internal.trainer.executors import resolve_executor
from trainkeep._internal.trainer.protocol import Layout, Placement
from trainkeep.torch import torch_envs

pytestmark = pytest.mark.ray


def test_a_worker_reserves_one_cpu_by_default_one_gpu_with_use_gpu_and_what_it_asks_for() -> None:
    assert worker_bundle(tk.ScalingConfig()) == {"CPU": 1.0}
    assert worker_bundle(tk.ScalingConfig(use_gpu=True)) == {"CPU": 1.0, "GPU": 1.0}
    assert worker_bundle(tk.ScalingConfig(use_gpu=True, resources_per_worker={"CPU": 0, "GPU": 0.5, "tpu": 2})) == {
        "GPU": 0.5, "tpu": 2.0}


def test_the_fit_check_counts_whole_workers_per_node() -> None:
    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 3.0, "GPU": 1.0}]
    assert fitting_workers({"CPU": 1.0}, nodes) == 5
    assert fitting_workers({"CPU": 2.0}, nodes) == 2
    assert fitting_workers({"CPU": 1.0, "GPU": 1.0}, nodes) == 1
    assert fitting_workers({"CPU": 0.1}, [{"CPU": 0.3}]) == 3  # no floating-point loss
    check_fits(tk.ScalingConfig(num_workers=5), nodes)
    with pytest.raises(tk.ConfigError, match=r"num_workers=6.*6 workers of \{CPU: 1\}.*at most 5.*2 node\(s\): "
                                             r"\{CPU: 2\}, \{CPU: 3, GPU: 1\}"):
        check_fits(tk.ScalingConfig(num_workers=6), nodes)
    with pytest.raises(ValueError, match="no live nodes"):
        check_fits(tk.ScalingConfig(), [])


def test_ranks_are_consecutive_per_node_in_the_order_the_nodes_first_appear() -> None:
    landings = [Landing("b", "10.0.0.2", [], 100), Landing("a", "10.0.0.1", [], 101),
                Landing("b", "10.0.0.2", [], 102), Landing("c", "10.0.0.3", [], 103),
                Landing("a", "10.0.0.1", [], 104)]
    order, layout = assign_ranks(landings)
    assert order == [0, 2, 1, 4, 3]
    assert layout.placements == [Placement(0, 0, 2), Placement(0, 1, 2), Placement(1, 0, 2), Placement(1, 1, 2),
                                 Placement(2, 0, 1)]
    assert layout.node_ips == ["10.0.0.2", "10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.3"]
    assert layout.ports == [100, 102, 101, 104, 103] and layout.master_port == 100  # rank 0's node hosts the store


def test_lightgbm_and_xgboost_reach_their_peers_on_the_nodes_of_the_layout() -> None:
    pytest.importorskip("lightgbm")
    pytest.importorskip("xgboost")
    import json

    from trainkeep.lightgbm import _LightGBMSetup
    from trainkeep.xgboost import _TRACKERS, _XGBoostSetup

    _, layout = assign_ranks([Landing("a", "10.0.0.1", [], 7001), Landing("b", "10.0.0.2", [], 7002)])
    envs = _LightGBMSetup().placed_envs(layout)
    assert {e["TRAINKEEP_LIGHTGBM_MACHINES"] for e in envs} == {"10.0.0.1:7001,10.0.0.2:7002"}
    setup = _XGBoostSetup()  # its tracker runs in the driver, where the workers reach it
    envs = setup.placed_envs(layout._replace(driver_ip="127.0.0.2"))
    try:
        assert json.loads(envs[1]["TRAINKEEP_XGBOOST_COLLECTIVE"])["dmlc_tracker_uri"] == "127.0.0.2"
    finally:
        with contextlib.suppress(Exception):  # a tracker no worker joined reports that on free()
            _TRACKERS.pop(id(setup)).free()


def test_each_rank_sees_the_gpus_of_its_node_s_workers_and_uses_the_one_at_its_local_rank() -> None:
    landings = [Landing("a", "10.0.0.1", ["3"]), Landing("b", "10.0.0.2", ["0"]), Landing("a", "10.0.0.1", ["1"]),
                Landing("a", "10.0.0.1", ["10"])]
    _, layout = assign_ranks(landings)
    assert visible_devices(layout) == ["1,3,10", "1,3,10", "1,3,10", "0"]
    envs = torch_envs(layout._replace(master_port=29500), use_gpu=True)
    assert [(e["RANK"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"], e["NODE_RANK"], e["CUDA_VISIBLE_DEVICES"])
            for e in envs] == [("0", "0", "3", "0", "1,3,10"), ("1", "1", "3", "0", "1,3,10"),
                               ("2", "2", "3", "0", "1,3,10"), ("3", "0", "1", "1", "0")]
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["WORLD_SIZE"]) for e in envs} == {("10.0.0.1", "29500", "4")}
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in torch_envs(layout, use_gpu=False))


def test_the_local_layout_gives_the_torch_environment_of_one_machine() -> None:
    envs = torch_envs(Layout.local(2), use_gpu=True)  # the local executor does not say which GPUs: none set
    assert [(e["MASTER_ADDR"], e["RANK"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"], e["NODE_RANK"]) for e in envs] == [
        ("127.0.0.1", "0", "0", "2", "0"), ("127.0.0.1", "1", "1", "2", "0")]
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and "CUDA_VISIBLE_DEVICES" not in envs[0]


def test_the_executor_is_local_or_ray_and_the_environment_picks_the_default(monkeypatch) -> None:
    monkeypatch.delenv("TRAINKEEP_EXECUTOR", raising=False)
    assert resolve_executor("local") == "local"
    assert resolve_executor("ray") == "ray"
    with pytest.raises(tk.ConfigError, match=r"executor must be one of \['local', 'ray'\].*got 'slurm'"):
        resolve_executor("slurm")
    with pytest.raises(tk.ConfigTypeError, match="executor must be None or one of"):
        tk.DataParallelTrainer(lambda: None, executor=1)  # type: ignore[arg-type]
    monkeypatch.setenv("TRAINKEEP_EXECUTOR", "ray")
    assert resolve_executor(None) == "ray"
    assert resolve_executor("local") == "local"
    monkeypatch.setenv("TRAINKEEP_EXECUTOR", "Ray")
    with pytest.raises(tk.ConfigError, match=r"TRAINKEEP_EXECUTOR must be one of .*got 'Ray'"):
        resolve_executor(None)


def test_placement_strategy_takes_ray_s_four_names() -> None:
    assert tk.ScalingConfig().placement_strategy == "PACK"
    assert tk.ScalingConfig(2, False, None, "SPREAD").placement_strategy == "SPREAD"
    assert tk.ScalingConfig(placement_strategy="STRICT_SPREAD").placement_strategy == "STRICT_SPREAD"
    with pytest.raises(tk.ConfigError, match=r"placement_strategy must be one of \['PACK', 'SPREAD', "
                                             r"'STRICT_PACK', 'STRICT_SPREAD'\], got 'spread'"):
        tk.ScalingConfig(placement_strategy="spread")


def test_strict_strategies_are_refused_when_the_nodes_could_never_hold_them() -> None:
    nodes = [{"CPU": 2.0}, {"CPU": 3.0}, {"CPU": 1.0}]
    check_fits(tk.ScalingConfig(num_workers=3, placement_strategy="STRICT_SPREAD"), nodes)
    with pytest.raises(tk.ConfigError, match=r"placement_strategy='STRICT_SPREAD'.*at most 3"):
        check_fits(tk.ScalingConfig(num_workers=4, placement_strategy="STRICT_SPREAD"), nodes)
    check_fits(tk.ScalingConfig(num_workers=3, placement_strategy="STRICT_PACK"), nodes)
    with pytest.raises(tk.ConfigError, match=r"placement_strategy='STRICT_PACK'.*at most 3"):
        check_fits(tk.ScalingConfig(num_workers=4, placement_strategy="STRICT_PACK"), nodes)
    check_fits(tk.ScalingConfig(num_workers=6, placement_strategy="PACK"), nodes)


def test_ray_without_ray_installed_names_the_extra() -> None:
    # a fresh interpreter in which `import ray` fails, as when it is not installed
    code = ("import sys; sys.modules['ray'] = None\n"
            "import trainkeep as tk\n"
            "assert tk.DataParallelTrainer(lambda: None).executor == 'local'\n"
            "try:\n"
            "    tk.DataParallelTrainer(lambda: None, executor='ray')\n"
            "except tk.ConfigError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "executor='ray' needs Ray" in out and "pip install 'trainkeep[ray]'" in out
