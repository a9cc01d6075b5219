"""Where a trainer's workers run: the choice of executor and the worker group it places.

``executor="local"`` starts worker processes on this machine and reserves nothing (``resources_per_worker``
sets only their thread counts); ``executor="ray"`` places Ray actors on the cluster this driver is connected
to. :func:`resolve_executor` picks one, :func:`place_workers` builds the group and says where its ranks run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

from trainkeep._internal.core.config import ScalingConfig
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer.backends.local import LocalWorkerGroup
from trainkeep._internal.trainer.group import WorkerGroup
from trainkeep.errors import ConfigError, ConfigTypeError

EXECUTORS = ("local", "ray")
"""Where the workers run: ``local`` processes on this machine, or ``ray`` actors on a Ray cluster."""

EXECUTOR_ENV = "TRAINKEEP_EXECUTOR"
"""The environment variable that picks the executor of trainers built with ``executor=None``."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
"""The thread-count variables that ``resources_per_worker={"CPU": n}`` sets in each worker's environment."""


def resolve_executor(executor: str | None) -> str:
    """Return the executor to use: ``executor``, else ``$TRAINKEEP_EXECUTOR``, else "ray" when a Ray driver is
    initialized in this process, else "local".

    Raises:
        ConfigTypeError / ConfigError (TypeError / ValueError) for a value that is not one of ``EXECUTORS``
        (naming where it came from), and ConfigError for "ray" when Ray is not installed.
    """
    source = "executor"
    if executor is None and os.environ.get(EXECUTOR_ENV):
        executor, source = os.environ[EXECUTOR_ENV], f"the environment variable {EXECUTOR_ENV}"
    if executor is None:
        ray = sys.modules.get("ray")  # not imported: certainly not initialized, and no need to pay for the import
        return "ray" if ray is not None and getattr(ray, "is_initialized", lambda: False)() else "local"
    if not isinstance(executor, str):
        raise ConfigTypeError(f"executor must be None or one of {list(EXECUTORS)}, got {executor!r}")
    if executor not in EXECUTORS:
        raise ConfigError(f"{source} must be one of {list(EXECUTORS)} (or None for the default), got {executor!r}")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{source}='ray' needs Ray, which is not installed: pip install 'trainkeep[ray]'")
    return executor


def local_thread_env(scaling_config: ScalingConfig, executor: str = "local") -> dict[str, str]:
    """Return what the local executor makes of ``resources_per_worker``: the thread-count environment.

    The local executor runs every worker on this machine and reserves nothing; ``{"CPU": n}`` caps the threads
    each worker's math libraries start (OpenMP, MKL, OpenBLAS, NumExpr; torch reads ``OMP_NUM_THREADS``) at
    ``n`` rounded down, at least 1 (``0`` leaves them alone), as Ray Train does for its workers.

    Raises:
        ConfigError (a ValueError) for any other resource with the local executor: "GPU" (use
        ``use_gpu=True``: one device per worker) and custom resources need an executor that places workers by
        resources (``executor="ray"``, which reserves them all).
    """
    resources = scaling_config.resources_per_worker or {}
    other = sorted(key for key in resources if key != "CPU")
    if other and executor == "local":
        raise ConfigError(
            f"ScalingConfig(resources_per_worker={resources!r}): the local executor honours only 'CPU' (the "
            f"thread count of each worker), not {other}. For GPUs pass use_gpu=True (one device per worker); "
            "GPU fractions and custom resources need an executor that places workers by resources: "
            "executor='ray' (pip install 'trainkeep[ray]')."
        )
    if not resources.get("CPU"):
        return {}
    threads = str(max(1, int(resources["CPU"])))
    return dict.fromkeys(THREAD_VARIABLES, threads)



def place_workers(executor: str, scaling_config: ScalingConfig, manager: CheckpointManager,
                  probe_view: Callable[[str, int], str] | None = None) -> tuple[WorkerGroup, p.Layout]:
    """Return a new worker group of ``executor``, placed, and where its ranks run."""
    if executor == "local":
        return LocalWorkerGroup(), p.Layout.local(scaling_config.num_workers)
    from trainkeep._internal.trainer.backends import ray as ray_backend

    protocols = manager.storage.fs.protocol
    is_local = "file" in ((protocols,) if isinstance(protocols, str) else protocols)
    group = ray_backend.RayWorkerGroup(scaling_config, os.path.dirname(manager.path) if is_local else None,
                                       probe_view)
    return group, group.place()
