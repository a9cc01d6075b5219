"""This worker's torch device and place in the group, for ``trainkeep.torch`` and the Lightning integration.

torch is imported only when one of these is called.
"""

from __future__ import annotations

from typing import Any

from trainkeep.errors import MissingDependencyError

INSTALL_HINT = "trainkeep.torch needs PyTorch: pip install 'trainkeep[torch]'"


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(f"{INSTALL_HINT} ({exc})") from exc
    return torch


def rank_and_world() -> tuple[int, int]:
    from trainkeep._internal.trainer import session

    if session._session is not None:
        context = session._session.context
        return context.get_world_rank(), context.get_world_size()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def uses_gpu() -> bool:
    from trainkeep._internal.trainer import session

    if session._session is not None:
        return bool(session._session.spec.use_gpu)
    return bool(import_torch().cuda.is_available())


def get_device() -> Any:
    """Return this worker's torch device: its GPU when the run uses GPUs, else the CPU."""
    torch = import_torch()
    if uses_gpu() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
