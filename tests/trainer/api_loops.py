"""Training functions of the tests of Ray Train's newer API (collectives, reported checkpoints, torch env).

Importable by name in the worker processes; light at import (no pytest, no torch).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from typing import Any

import trainkeep as tk
from trainkeep import collective


def log(config: dict[str, Any], line: str) -> None:
    with open(config["log"], "a") as f:
        f.write(line + "\n")


def barrier_order(config: dict[str, Any]) -> None:
    """Rank r sleeps r * delay before the barrier; everyone logs when it leaves it."""
    rank = tk.get_context().get_world_rank()
    time.sleep(rank * config.get("delay", 0.3))
    log(config, f"arrive {rank} {time.time()}")
    collective.barrier()
    log(config, f"leave {rank} {time.time()}")


def broadcast(config: dict[str, Any]) -> Any:
    """Broadcast rank 0's object twice (a dict, then None) and log what each rank got."""
    rank = tk.get_context().get_world_rank()
    got = collective.broadcast_from_rank_zero({"from": rank, "values": list(range(rank + 3))})
    nothing = collective.broadcast_from_rank_zero(None if rank == 0 else "mine")
    log(config, json.dumps({"rank": rank, "got": got, "nothing": nothing}))
    tk.report({"rank": rank, "got": got["from"]})
    return got


def skip_barrier(config: dict[str, Any]) -> None:
    """Every rank but ``config["absent"]`` calls barrier(); the absent one hangs (or returns, with "returns")."""
    rank = tk.get_context().get_world_rank()
    if rank == config["absent"]:
        if config.get("returns"):
            return
        time.sleep(120)
    collective.barrier()


def mismatched(config: dict[str, Any]) -> None:
    if tk.get_context().get_world_rank() == 0:
        collective.barrier()
    else:
        collective.broadcast_from_rank_zero(1)


def unpicklable_broadcast(config: dict[str, Any]) -> None:
    rank = tk.get_context().get_world_rank()
    collective.broadcast_from_rank_zero(threading.Lock() if rank == 0 else None)


def reports_then_lists(config: dict[str, Any]) -> None:
    """Report ``losses`` (checkpoints from rank 0, in config["mode"]), then log get_all_reported_checkpoints()."""
    rank = tk.get_context().get_world_rank()
    for epoch, loss in enumerate(config["losses"]):
        checkpoint = None
        if rank == 0:
            d = tempfile.mkdtemp(dir=config["tmp"])
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"epoch": epoch}, f)
            checkpoint = tk.Checkpoint.from_directory(d)
        tk.report({"epoch": epoch, "loss": loss}, checkpoint=checkpoint,
                  checkpoint_upload_mode=tk.CheckpointUploadMode(config.get("mode", "SYNC")))
    listed = tk.get_all_reported_checkpoints(**config.get("kwargs", {}))
    rows = []
    for item in listed:
        with item.checkpoint.as_directory() as d:
            saved = json.load(open(os.path.join(d, "state.json")))["epoch"]
        rows.append([os.path.basename(item.checkpoint.path), item.metrics["epoch"], saved, item.status.value])
    log(config, json.dumps({"rank": rank, "rows": rows}))


def accelerate_env(config: dict[str, Any]) -> None:
    import torch

    log(config, json.dumps({"rank": tk.get_context().get_world_rank(),
                            "device": os.environ.get("ACCELERATE_TORCH_DEVICE"),
                            "get_device": str(tk.torch.get_device()),
                            "cuda": torch.cuda.is_available()}))
