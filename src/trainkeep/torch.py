"""PyTorch: TorchTrainer (a DataParallelTrainer that sets up ``torch.distributed``) and Ray Train's helpers.

``prepare_model``, ``prepare_data_loader`` and ``get_device`` mean what they mean in ``ray.train.torch``, so a
Ray Train script runs with its imports changed. torch is imported only when one of these is used.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from trainkeep._internal.core.config import RunConfig, ScalingConfig, ValidationConfig
from trainkeep._internal.engine.result import Result
from trainkeep._internal.integrations.torch_device import (
    INSTALL_HINT,
    get_device,
    import_torch,
    rank_and_world,
)
from trainkeep._internal.trainer.data_parallel import DataParallelTrainer
from trainkeep._internal.trainer.datasets import DataConfig
from trainkeep._internal.trainer.protocol import Layout
from trainkeep._internal.trainer.setup import WorkerSetup
from trainkeep.errors import ConfigError, ConfigTypeError, MissingDependencyError


@dataclass
class TorchConfig:
    """How the workers join ``torch.distributed``.

    Args:
        backend: "gloo", "nccl", ...; None picks "nccl" with GPUs and "gloo" without.
        timeout_s: the process group's timeout for collectives.
    """

    backend: str | None = None
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.backend is not None and (not isinstance(self.backend, str) or not self.backend):
            raise ConfigError(f"TorchConfig.backend must be None or a backend name such as 'gloo', got "
                              f"{self.backend!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError(f"TorchConfig.timeout_s must be a number > 0, got {self.timeout_s!r}")


class _TorchSetup(WorkerSetup):
    """Join the workers into one process group before the training function, leave it after."""

    def __init__(self, config: TorchConfig, use_gpu: bool) -> None:
        self.config, self.use_gpu = config, use_gpu

    def worker_envs(self, world_size: int) -> list[dict[str, str]]:
        return self.placed_envs(Layout.local(world_size))

    def placed_envs(self, layout: Layout) -> list[dict[str, str]]:
        return torch_envs(layout, self.use_gpu)

    def start(self, context: Any, spec: Any) -> None:
        torch = import_torch()
        import torch.distributed as dist

        if self.use_gpu:
            torch.cuda.set_device(context.get_local_rank() % max(1, torch.cuda.device_count()))
        backend = self.config.backend or ("nccl" if self.use_gpu else "gloo")
        dist.init_process_group(backend, init_method="env://", rank=context.get_world_rank(),
                                world_size=context.get_world_size(),
                                timeout=datetime.timedelta(seconds=self.config.timeout_s))
        os.environ["ACCELERATE_TORCH_DEVICE"] = str(get_device())  # as Ray: Accelerate picks this device

    def stop(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def torch_envs(layout: Layout, use_gpu: bool) -> list[dict[str, str]]:
    """Return each rank's ``torch.distributed`` environment: rank 0's node hosts the store (MASTER_ADDR/PORT).

    With GPUs, each rank sees every GPU given to the group's workers on its node and uses the one at its local
    rank (``torch.cuda.set_device``), when the executor says which GPUs it gave (Ray does).
    """
    from trainkeep._internal.trainer.backends.placement import visible_devices

    # a fresh port per attempt: the last group's store may still hold the old one
    port = layout.master_port or _free_port()
    world_size = len(layout.placements)
    devices = visible_devices(layout) if use_gpu and layout.gpu_ids is not None else [None] * world_size
    envs = []
    for rank, (placement, visible) in enumerate(zip(layout.placements, devices, strict=True)):
        env = {"MASTER_ADDR": layout.node_ips[0], "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(placement.local_rank),
               "LOCAL_WORLD_SIZE": str(placement.local_world_size), "GROUP_RANK": str(placement.node_rank),
               "NODE_RANK": str(placement.node_rank)}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        envs.append(env)
    return envs


class TorchTrainer(DataParallelTrainer):
    """A DataParallelTrainer whose workers form a ``torch.distributed`` process group (gloo on CPU, nccl on GPU).

    Each worker gets MASTER_ADDR (rank 0's node: 127.0.0.1 with the local executor), a MASTER_PORT free there,
    RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and NODE_RANK; the group is created before the training
    function runs and destroyed after it returns. On GPUs each worker uses one device, at its local rank. As in
    Ray Train, ``ACCELERATE_TORCH_DEVICE`` is set to the worker's device (``str(get_device())``: "cpu", or
    "cuda:N"), so Hugging Face Accelerate uses the same one.

    Raises:
        ImportError when torch is not installed; the DataParallelTrainer's errors for bad arguments.
    """

    def __init__(self, train_loop_per_worker: Callable[..., Any], *, train_loop_config: dict[str, Any] | None = None,
                 torch_config: TorchConfig | None = None, scaling_config: ScalingConfig | None = None,
                 run_config: RunConfig | None = None, executor: str | None = None,
                 validation_config: ValidationConfig | None = None, datasets: dict[str, Any] | None = None,
                 dataset_config: DataConfig | None = None) -> None:
        if importlib.util.find_spec("torch") is None:
            raise MissingDependencyError(INSTALL_HINT)
        if torch_config is not None and not isinstance(torch_config, TorchConfig):
            raise ConfigTypeError(f"torch_config must be a trainkeep.torch.TorchConfig, got {torch_config!r}")
        super().__init__(train_loop_per_worker, train_loop_config=train_loop_config,
                         scaling_config=scaling_config, run_config=run_config, executor=executor,
                         validation_config=validation_config, datasets=datasets, dataset_config=dataset_config)
        self._setup = _TorchSetup(torch_config or TorchConfig(), self.scaling_config.use_gpu)

    def fit(self) -> Result:
        """Check the GPUs (when asked for), then run as :meth:`DataParallelTrainer.fit`."""
        if self.scaling_config.use_gpu and self.executor == "local":  # Ray checks its cluster's GPUs itself
            count = import_torch().cuda.device_count()
            if count < self.scaling_config.num_workers:
                raise ConfigError(f"ScalingConfig(use_gpu=True, num_workers={self.scaling_config.num_workers}) "
                                  f"needs one GPU per worker, but this machine has {count}")
        return super().fit()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------- helpers


def prepare_model(model: Any, move_to_device: bool | Any = True, parallel_strategy: str | None = "ddp",
                  parallel_strategy_kwargs: dict[str, Any] | None = None) -> Any:
    """Move ``model`` to this worker's device and wrap it in DistributedDataParallel when there are 2+ workers.

    Args:
        move_to_device: True for :func:`get_device`, False to leave it, or a torch.device.
        parallel_strategy: "ddp" or None (no wrapping).
        parallel_strategy_kwargs: passed to DistributedDataParallel.

    Raises:
        ValueError for another strategy.
    """
    torch = import_torch()
    if parallel_strategy not in ("ddp", None):
        raise ConfigError(f"parallel_strategy must be 'ddp' or None, got {parallel_strategy!r}")
    device = get_device() if move_to_device is True else move_to_device
    if move_to_device is not False:
        model = model.to(device)
    _, world_size = rank_and_world()
    if parallel_strategy == "ddp" and world_size > 1:
        kwargs = dict(parallel_strategy_kwargs or {})
        if isinstance(device, torch.device) and device.type == "cuda":
            kwargs.setdefault("device_ids", [device])
            kwargs.setdefault("output_device", device)
        model = torch.nn.parallel.DistributedDataParallel(model, **kwargs)
    return model


def prepare_data_loader(data_loader: Any, add_dist_sampler: bool = True, move_to_device: bool = True,
                        auto_transfer: bool = True) -> Any:
    """Give each worker its shard of ``data_loader`` (a DistributedSampler), and move batches to its GPU.

    The loader is rebuilt with the same settings and a ``DistributedSampler`` that shuffles when the original
    shuffled (call ``loader.sampler.set_epoch(epoch)`` each epoch for a new order). On the CPU batches stay
    where they are.

    Raises:
        ValueError for a loader with a custom batch_sampler, which cannot be sharded automatically.
    """
    torch = import_torch()
    from torch.utils.data import DistributedSampler, IterableDataset

    rank, world_size = rank_and_world()
    if (add_dist_sampler and world_size > 1 and not isinstance(data_loader.dataset, IterableDataset)
            and not isinstance(data_loader.sampler, DistributedSampler)):
        data_loader = _with_sampler(data_loader, rank, world_size)
    device = get_device()
    if move_to_device and device.type == "cuda":
        return _DeviceLoader(data_loader, device, auto_transfer, torch)
    return data_loader


def _with_sampler(loader: Any, rank: int, world_size: int) -> Any:
    from torch.utils.data import DistributedSampler, RandomSampler

    if loader.batch_size is None and loader.batch_sampler is not None:
        raise ConfigError("prepare_data_loader cannot shard a DataLoader built with a custom batch_sampler; "
                          "shard it yourself and pass add_dist_sampler=False")
    sampler: Any = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                 shuffle=isinstance(loader.sampler, RandomSampler))
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return type(loader)(loader.dataset, **kwargs)


class _DeviceLoader:
    """Iterate a DataLoader and move every tensor of each batch to ``device``."""

    def __init__(self, loader: Any, device: Any, auto_transfer: bool, torch: Any) -> None:
        self._loader, self._device, self._torch = loader, device, torch
        self._non_blocking = auto_transfer and device.type == "cuda"

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __iter__(self) -> Iterator[Any]:
        for batch in self._loader:
            yield self._move(batch)

    def _move(self, item: Any) -> Any:
        if isinstance(item, self._torch.Tensor):
            return item.to(self._device, non_blocking=self._non_blocking)
        if isinstance(item, dict):
            return {k: self._move(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            moved = [self._move(v) for v in item]
            return type(item)(*moved) if hasattr(item, "_fields") else type(item)(moved)
        return item


__all__ = ["TorchConfig", "TorchTrainer", "get_device", "prepare_data_loader", "prepare_model"]
