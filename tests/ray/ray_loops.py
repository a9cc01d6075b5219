"""Training functions of the Ray executor tests (importable by the workers through the driver's sys.path)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import trainkeep as tk


def log(path: str, line: str) -> None:
    """Append one line to the test's log (every simulated node shares this machine's disk)."""
    with open(path, "a") as f:
        f.write(line + "\n")


def read_log(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def train(config: dict[str, Any]) -> dict[str, Any]:
    """Report ``config["losses"]`` one per epoch, every rank with its shard; resume from the latest checkpoint.

    ``config["gate"] = [epoch, path]``: before that epoch, wait until ``path`` exists (the test acts meanwhile).
    """
    import ray

    context = tk.get_context()
    rank = context.get_world_rank()
    start = tk.get_checkpoint()
    epoch0 = 0
    if start is not None:
        with start.as_directory() as d, open(os.path.join(d, "state.json")) as f:
            epoch0 = json.load(f)["epoch"] + 1
    node_id = ray.get_runtime_context().get_node_id()
    log(config["log"], f"start rank={rank} epoch={epoch0} node={node_id} node_rank={context.get_node_rank()} "
                       f"local={context.get_local_rank()}/{context.get_local_world_size()} "
                       f"master={os.environ.get('MASTER_ADDR')} from={start.path.rsplit('/', 1)[1] if start else None}")
    for epoch in range(epoch0, len(config["losses"])):
        gate = config.get("gate")
        if gate and gate[0] == epoch:
            log(config["log"], f"gate rank={rank} pid={os.getpid()} node={node_id}")
            while not os.path.exists(gate[1]):
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"shard_{rank}.txt"), "w") as f:
                f.write(f"rank {rank} epoch {epoch}")
            if rank == 0:
                with open(os.path.join(d, "state.json"), "w") as f:
                    json.dump({"epoch": epoch}, f)
            tk.report({"epoch": epoch, "loss": config["losses"][epoch]},
                      checkpoint=tk.Checkpoint.from_directory(d))
    return {"rank": rank, "epochs": len(config["losses"])}


def torch_train(config: dict[str, Any]) -> None:
    """All-reduce ``rank + 1`` over the TorchTrainer's process group; log what each rank saw."""
    import ray
    import torch
    import torch.distributed as dist

    context = tk.get_context()
    total = torch.tensor([float(context.get_world_rank() + 1)])
    dist.all_reduce(total)
    env = " ".join(f"{key}={os.environ[key]}" for key in ("MASTER_ADDR", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                           "NODE_RANK"))
    log(config["log"], f"torch rank={context.get_world_rank()} sum={total.item():g} local={context.get_local_rank()} "
                       f"node={ray.get_runtime_context().get_node_id()} {env}")
    tk.report({"sum": total.item()})


def connections(config: dict[str, Any]) -> dict[str, Any]:
    """Return this worker's inet connections and the driver's (``config["driver_pid"]``), while connected."""
    import psutil

    def of(pid: int) -> list[tuple[str, str, str]]:
        return [(c.laddr.ip if c.laddr else "", c.raddr.ip if c.raddr else "", c.status)
                for c in psutil.Process(pid).net_connections(kind="inet")]

    def ports(pid: int) -> list[tuple[int, int]]:
        return [(c.laddr.port, c.raddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
                if c.laddr and c.raddr]

    tk.report({"rank": tk.get_context().get_world_rank()})
    return {"mine": of(os.getpid()), "driver": of(config["driver_pid"]), "my_ports": ports(os.getpid()),
            "driver_ports": ports(config["driver_pid"])}


def read_shards(config: dict[str, Any]) -> None:
    """Read this rank's shard of "rows" (ray.data) and "items" (a list) each epoch, log what it saw, report.

    ``config["fail_once"] = [rank, marker]``: that rank fails after its first epoch of the first attempt. "whole"
    (ray.data, not split) is read at the end.
    """
    import json

    rank = tk.get_context().get_world_rank()
    rows, items = tk.get_dataset_shard("rows"), tk.get_dataset_shard("items")
    rank_fails, marker = config.get("fail_once", [None, ""])
    for epoch in range(config["epochs"]):
        ids = [int(row["id"]) for row in rows.iter_rows()]
        log(config["log"], json.dumps({"rank": rank, "epoch": epoch, "type": type(rows).__name__, "ids": ids,
                                       "items": items, "retry": bool(marker) and os.path.exists(marker),
                                       "order": rows.get_context().execution_options.preserve_order}))
        tk.report({"epoch": epoch})
        if rank == rank_fails and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("rank fails after its first epoch, on purpose")
    whole = [int(row["id"]) for row in tk.get_dataset_shard("whole").iter_rows()]
    log(config["log"], json.dumps({"rank": rank, "whole": whole}))
