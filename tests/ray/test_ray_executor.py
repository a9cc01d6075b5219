"""The Ray executor on a simulated three-node Ray cluster (one raylet per node, all on 127.0.0.1), storage on S3.

One cluster serves the whole module (see conftest.py); the test that removes a node comes last.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time

import psutil
import pytest
import ray_loops as loops
from ray_loops import read_log

import trainkeep as tk

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

LOSSES = [1.5, 1.2, 1.6, 1.1, 1.4]


def _run_config(s3, name: str, **kwargs) -> tk.RunConfig:
    return tk.RunConfig(name=name, storage_path=f"s3://{s3.bucket_name}/runs", storage_filesystem=s3, **kwargs)


def _checkpoints(s3, name: str) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p in s3.ls(f"{s3.bucket_name}/runs/{name}", refresh=True)
                  if "checkpoint_" in p)


def _starts(log: str) -> list[dict[str, str]]:
    return [dict(part.split("=", 1) for part in line.split()[1:]) for line in read_log(log)
            if line.startswith("start ")]


def test_a_spread_run_places_ranks_on_several_nodes_and_commits_every_shard(ray_cluster, s3, log_path) -> None:
    trainer = tk.DataParallelTrainer(
        loops.train, train_loop_config={"log": log_path, "losses": LOSSES[:2]},
        scaling_config=tk.ScalingConfig(num_workers=4, placement_strategy="SPREAD"),
        run_config=_run_config(s3, "spread"))
    assert trainer.executor == "ray"  # the default, since this driver is connected to Ray
    result = trainer.fit()

    starts = sorted(_starts(log_path), key=lambda s: int(s["rank"]))
    assert [s["rank"] for s in starts] == ["0", "1", "2", "3"]
    nodes = [s["node"] for s in starts]
    assert len(set(nodes)) >= 2
    # ranks follow the nodes: node ranks ascend with the world rank; local ranks count within a node
    assert [int(s["node_rank"]) for s in starts] == sorted(int(s["node_rank"]) for s in starts)
    for s in starts:
        same = [t for t in starts if t["node"] == s["node"]]
        assert s["local"] == f"{same.index(s)}/{len(same)}"
    assert result.return_value == {"rank": 0, "epochs": 2}
    assert _checkpoints(s3, "spread") == ["checkpoint_000000", "checkpoint_000001"]
    files = sorted(p.rsplit("/", 1)[1] for p in s3.ls(result.checkpoint.path, refresh=True))
    assert [f for f in files if f.startswith(("shard", "state"))] == [
        "shard_0.txt", "shard_1.txt", "shard_2.txt", "shard_3.txt", "state.json"]
    assert result.metrics == {"epoch": 1, "loss": LOSSES[1]}


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return bool((getattr(address, "ipv4_mapped", None) or address).is_loopback)


def test_nothing_the_cluster_started_listens_beyond_loopback(ray_cluster, s3) -> None:
    # a worker's own connections, and its connection to the driver, are on loopback too
    seen = tk.DataParallelTrainer(loops.connections, train_loop_config={"driver_pid": os.getpid()},
                                  run_config=_run_config(s3, "net")).fit().return_value
    assert seen["mine"] and all(_is_loopback(ip) for laddr, raddr, _ in seen["mine"] for ip in (laddr, raddr) if ip)
    assert set(seen["my_ports"]) & {(b, a) for a, b in seen["driver_ports"]}  # the worker's link to the driver
    assert all(_is_loopback(ip) for laddr, raddr, _ in seen["driver"] for ip in (laddr, raddr) if ip)

    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    listening = set()
    for proc in processes:
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    assert len(processes) > 5 and listening  # the raylets, the GCS, the workers
    assert all(_is_loopback(ip) for ip in listening), sorted(listening)


def test_the_ray_executor_keeps_the_same_checkpoints_as_the_local_one(ray_cluster, s3, tmp_path) -> None:
    kept = {}
    for executor in ("local", "ray"):
        log = str(tmp_path / f"{executor}.txt")
        result = tk.DataParallelTrainer(
            loops.train, train_loop_config={"log": log, "losses": LOSSES[:4]},
            scaling_config=tk.ScalingConfig(num_workers=2), executor=executor,
            run_config=_run_config(s3, executor, checkpoint_config=tk.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"))).fit()
        kept[executor] = (_checkpoints(s3, executor), [c.path.rsplit("/", 1)[1] for c, _ in result.best_checkpoints],
                          result.metrics_dataframe["loss"].tolist())
    assert kept["ray"] == kept["local"]
    # the two lowest losses (epochs 1 and 3), the latest among them
    assert kept["ray"][0] == ["checkpoint_000001", "checkpoint_000003"]


def test_the_default_executor_is_ray_when_it_is_initialized_unless_the_environment_says(ray_cluster,
                                                                                        monkeypatch) -> None:
    assert tk.DataParallelTrainer(loops.train).executor == "ray"
    monkeypatch.setenv("TRAINKEEP_EXECUTOR", "local")
    assert tk.DataParallelTrainer(loops.train).executor == "local"
    assert tk.DataParallelTrainer(loops.train, executor="ray").executor == "ray"  # an explicit choice wins


@pytest.mark.parametrize("scaling, asked", [
    (tk.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 3}), "CPU: 3"),
    (tk.ScalingConfig(num_workers=1, use_gpu=True), "GPU: 1"),
    (tk.ScalingConfig(num_workers=7), "7 workers"),
])
def test_a_request_the_cluster_can_never_hold_fails_fast_and_writes_nothing(ray_cluster, s3, log_path, scaling,
                                                                            asked) -> None:
    trainer = tk.DataParallelTrainer(loops.train, train_loop_config={"log": log_path, "losses": [1.0]},
                                     scaling_config=scaling, run_config=_run_config(s3, "impossible"))
    t0 = time.monotonic()
    with pytest.raises(tk.ConfigError, match=rf"{asked}.*could hold at most \d+.*3 node\(s\).*CPU: 2"):
        trainer.fit()
    assert time.monotonic() - t0 < 10
    assert not s3.exists(f"{s3.bucket_name}/runs/impossible")


def test_local_storage_must_be_seen_by_every_node_of_the_group(ray_cluster, tmp_path, log_path) -> None:
    def run(name: str, view) -> tk.Result:
        trainer = tk.DataParallelTrainer(
            loops.train, train_loop_config={"log": log_path, "losses": [1.0]},
            scaling_config=tk.ScalingConfig(num_workers=2, placement_strategy="SPREAD"),
            run_config=tk.RunConfig(name=name, storage_path=str(tmp_path / "storage")))
        trainer._probe_view = view
        return trainer.fit()

    # every simulated node shares this machine's disk: the probe passes
    assert run("shared", None).checkpoint is not None
    # a node with a disk of its own: the driver's probe file is not there
    with pytest.raises(tk.ConfigError, match=r"storage_path .* local directory.*node 1.*shared file system.*s3://"):
        run("unshared", lambda path, node_rank: path + ".elsewhere" if node_rank > 0 else path)
    assert [n for n in os.listdir(tmp_path / "storage") if n.startswith(".trainkeep-probe")] == []


def test_a_torch_trainer_joins_its_ray_workers_into_one_process_group(ray_cluster, s3, log_path) -> None:
    pytest.importorskip("torch")
    from trainkeep.torch import TorchTrainer

    result = TorchTrainer(loops.torch_train, train_loop_config={"log": log_path},
                          scaling_config=tk.ScalingConfig(num_workers=2, placement_strategy="SPREAD"),
                          run_config=_run_config(s3, "torch")).fit()
    assert result.metrics == {"sum": 3.0}
    lines = sorted(read_log(log_path))
    seen = [dict(part.split("=", 1) for part in line.split()[1:]) for line in lines]
    assert [s["sum"] for s in seen] == ["3"] * 2
    assert all(s["RANK"] == s["rank"] and s["LOCAL_RANK"] == s["local"] and s["MASTER_ADDR"] == "127.0.0.1"
               for s in seen)
    for s in seen:  # LOCAL_WORLD_SIZE counts the workers of the rank's node
        assert s["LOCAL_WORLD_SIZE"] == str(sum(t["node"] == s["node"] for t in seen))


def test_a_ray_dataset_is_split_among_the_ranks_and_split_afresh_after_a_restart(ray_cluster, s3, tmp_path,
                                                                                   log_path) -> None:
    import ray
    from ray.data import ExecutionOptions

    marker = str(tmp_path / "failed")
    tk.DataParallelTrainer(
        loops.read_shards, train_loop_config={"log": log_path, "epochs": 1, "fail_once": [1, marker]},
        datasets={"rows": lambda: ray.data.range(40, override_num_blocks=2), "items": list(range(5)),
                  "whole": ray.data.range(3, override_num_blocks=1)},
        dataset_config=tk.DataConfig(datasets_to_split=["rows", "items"],
                                     execution_options={"rows": ExecutionOptions(preserve_order=True)}),
        scaling_config=tk.ScalingConfig(num_workers=2),
        run_config=_run_config(s3, "datasets", failure_config=tk.FailureConfig(max_failures=1))).fit()

    seen = [json.loads(line) for line in read_log(log_path)]
    epochs = [s for s in seen if "epoch" in s]
    assert {(s["type"], s["order"]) for s in epochs} == {("StreamSplitDataIterator", True)}
    assert any(not s["retry"] for s in epochs)  # the first attempt read before rank 1 failed
    # the new attempt's shards hold every row once, equally split
    shards = sorted((s for s in epochs if s["retry"]), key=lambda s: s["rank"])
    assert [s["rank"] for s in shards] == [0, 1]
    assert sorted(i for s in shards for i in s["ids"]) == list(range(40))
    assert [len(s["ids"]) for s in shards] == [20, 20]
    assert [s["items"] for s in shards] == [[0, 1, 2], [3, 4]]  # a list: the local executor's split
    assert sorted(s["rank"] for s in seen if "whole" in s) == [0, 1]  # not split: each rank reads all of it
    assert all(s["whole"] == [0, 1, 2] for s in seen if "whole" in s)


def test_a_ray_dataset_needs_the_ray_executor(ray_cluster, s3) -> None:
    import ray

    with pytest.raises(tk.ConfigTypeError, match=r"datasets\['train'\] is a ray.data.dataset.Dataset: a ray.data.Dataset "
                                                 r".* needs the Ray executor .*executor='ray'"):
        tk.DataParallelTrainer(lambda: None, datasets={"train": ray.data.range(4)}, executor="local",
                               run_config=_run_config(s3, "local_ray_data"))
    assert not s3.exists(f"{s3.bucket_name}/runs/local_ray_data")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_removed_node_is_a_worker_failure_and_the_run_resumes_on_the_nodes_left(ray_cluster, s3, tmp_path,
                                                                                  log_path) -> None:
    gate = str(tmp_path / "gate")
    removed: list[str] = []

    def remove_a_worker_node() -> None:
        # once every rank waits before epoch 2 (epochs 0 and 1 committed), remove a worker node hosting a rank
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            gated = [line for line in (read_log(log_path) if os.path.exists(log_path) else []) if line.startswith("gate")]
            if len(gated) == 4:
                break
            time.sleep(0.1)
        used = {line.split("node=")[1] for line in gated}
        node = next(n for n in ray_cluster.worker_nodes if n.node_id in used)
        removed.append(node.node_id)
        ray_cluster.remove_node(node, allow_graceful=False)  # SIGKILL: the node's raylet and workers die at once
        # the node's worker processes end a moment after its raylet: open the gate only once they are gone, or
        # a rank of the removed node could still report epoch 2 and the run would resume from checkpoint_000002
        doomed = [int(line.split("pid=")[1].split()[0]) for line in gated if line.endswith(f"node={node.node_id}")]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in doomed):
            time.sleep(0.05)
        open(gate, "w").close()

    remover = threading.Thread(target=remove_a_worker_node, daemon=True)
    remover.start()
    result = tk.DataParallelTrainer(
        loops.train, train_loop_config={"log": log_path, "losses": LOSSES[:4], "gate": [2, gate]},
        scaling_config=tk.ScalingConfig(num_workers=4, placement_strategy="SPREAD"),
        run_config=_run_config(s3, "lost_node", failure_config=tk.FailureConfig(max_failures=1))).fit()
    remover.join()

    starts = _starts(log_path)
    assert sorted(s["from"] for s in starts) == ["None"] * 4 + ["checkpoint_000001"] * 4
    assert not {s["node"] for s in starts if s["from"] != "None"} & set(removed)
    assert _checkpoints(s3, "lost_node") == [f"checkpoint_{i:06d}" for i in range(4)]
    assert result.metrics_dataframe["epoch"].tolist() == [0, 1, 2, 3]
    files = sorted(p.rsplit("/", 1)[1] for p in s3.ls(result.checkpoint.path, refresh=True))
    assert [f for f in files if f.startswith("shard")] == [f"shard_{r}.txt" for r in range(4)]
