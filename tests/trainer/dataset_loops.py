"""Training functions and datasets of the ``datasets=`` tests (importable by name in the worker processes).

Light at import: numpy, pandas and torch are imported where they are used.
"""

from __future__ import annotations

import json
import os
from typing import Any

import trainkeep as tk


def _plain(value: Any) -> Any:
    """Return ``value`` as JSON-able Python: items of arrays, tensors and frames become ints."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _rows(shard: Any) -> list[Any]:
    if hasattr(shard, "iloc"):  # a pandas frame: its rows' first column
        return [int(v) for v in shard.iloc[:, 0]]
    return [_plain(shard[i]) for i in range(len(shard))]


def log_shards(config: dict[str, Any]) -> None:
    """Log every dataset's shard on this rank: its type and its rows, one JSON line per dataset.

    ``config["fail_once"] = rank``: that rank fails the first attempt (the one that finds no marker file), after
    logging; each line says which attempt it is from.
    """
    rank = tk.get_context().get_world_rank()
    marker = config.get("marker")
    attempt = int(bool(marker) and os.path.exists(marker))
    lines = []
    for name in config["names"]:
        shard = tk.get_dataset_shard(name)
        assert tk.get_dataset_shard(name) is shard  # the same object on every call
        lines.append(json.dumps({"rank": rank, "attempt": attempt, "name": name, "type": type(shard).__name__,
                                 "rows": _rows(shard)}))
    with open(config["log"], "a") as f:
        f.write("".join(line + "\n" for line in lines))
    tk.collective.barrier()  # every rank read the marker before it is made
    if "fail_once" in config and rank == config["fail_once"] and not attempt:
        open(marker, "w").close()  # type: ignore[arg-type]
        raise RuntimeError("the first attempt fails on purpose")
    tk.report({"rank": rank})


def ask_for(config: dict[str, Any]) -> None:
    """Ask for the shard named ``config["name"]`` (and log each attempt)."""
    with open(config["log"], "a") as f:
        f.write("start\n")
    tk.get_dataset_shard(config["name"])


class Squares:
    """A sized indexable of the user's own, neither a list nor a torch Dataset: item i is i * i."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i * i


class LockedSquares(Squares):
    """Squares holding a lock, which cannot be pickled."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        import threading

        self.lock = threading.Lock()


def torch_squares(n: int) -> Any:
    """Return a torch map-style Dataset of ``n`` items, item i being i * i (its class defined here)."""
    from torch.utils.data import Dataset

    class TorchSquares(Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> int:
            return i * i

    return TorchSquares()
