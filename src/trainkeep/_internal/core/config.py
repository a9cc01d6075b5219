"""The configuration dataclasses and their validation. No I/O happens here."""

from __future__ import annotations

import datetime as _dt
import enum
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from trainkeep.errors import ConfigError, ConfigTypeError

DEFAULT_STORAGE_PATH = "~/trainkeep_results"

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""The ``ScalingConfig.placement_strategy`` values: Ray's placement group strategies."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_amount(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def _is_filesystem(value: Any) -> bool:
    import fsspec

    return isinstance(value, fsspec.AbstractFileSystem) or type(value).__module__.startswith("pyarrow")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _short_repr(config: Any) -> str:
    """Return ``Name(field=value, ...)`` with only the fields that differ from a default-built config.

    As in Ray, a default config prints short (``RunConfig()``), and the text still evaluates back to an equal
    config when the trainkeep names are in scope (for values whose own repr does).
    """
    default = type(config)()
    shown = [f"{f.name}={getattr(config, f.name)!r}" for f in fields(config)
             if f.repr and not _same(getattr(config, f.name), getattr(default, f.name))]
    return f"{type(config).__name__}({', '.join(shown)})"


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a value whose == raises (an array) differs from the default
        return False


class CheckpointUploadMode(str, enum.Enum):
    """How ``report()`` hands a checkpoint to storage (Ray Train's names)."""

    SYNC = "SYNC"
    """Upload before ``report()`` returns."""
    ASYNC = "ASYNC"
    """Return once the files are handed to a background uploader."""
    NO_UPLOAD = "NO_UPLOAD"
    """The checkpoint already lies inside the run directory and is registered as it is."""


@dataclass
class CheckpointConfig:
    """Which checkpoints of a run to keep, and when trainers that own the loop take them.

    Args:
        num_to_keep: how many checkpoints to keep by rank; None keeps all. The latest committed checkpoint is
            always kept as well, so up to ``num_to_keep + 1`` can be on storage.
        checkpoint_score_attribute: the metric that ranks checkpoints (nested keys joined with "/"); None
            ranks by recency.
        checkpoint_score_order: "max" or "min".
        checkpoint_frequency: for trainers that own the loop, checkpoint every this many iterations (0: never).
        checkpoint_at_end: for trainers that own the loop, checkpoint after the last iteration (None: True there).

    Raises:
        ConfigError / ConfigTypeError (ValueError / TypeError) naming the field, the value and what is allowed.
    """

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None

    def __post_init__(self) -> None:
        if self.num_to_keep is not None:
            if not _is_int(self.num_to_keep):
                raise ConfigTypeError(
                    f"num_to_keep must be None or an integer >= 1, got {_describe(self.num_to_keep)}"
                )
            if self.num_to_keep < 1:
                raise ConfigError(f"num_to_keep must be None or an integer >= 1, got {self.num_to_keep}")
        attr = self.checkpoint_score_attribute
        if attr is not None:
            if not isinstance(attr, str):
                raise ConfigTypeError(
                    f"checkpoint_score_attribute must be None or a non-empty string, got {_describe(attr)}"
                )
            if not attr:
                raise ConfigError("checkpoint_score_attribute must be None or a non-empty string, got ''")
        if not isinstance(self.checkpoint_score_order, str) or self.checkpoint_score_order not in ("max", "min"):
            raise ConfigError(
                f"checkpoint_score_order must be 'max' or 'min' (lower case), got "
                f"{_describe(self.checkpoint_score_order)}"
            )
        if not _is_int(self.checkpoint_frequency):
            raise ConfigTypeError(
                f"checkpoint_frequency must be an integer >= 0, got {_describe(self.checkpoint_frequency)}"
            )
        if self.checkpoint_frequency < 0:
            raise ConfigError(f"checkpoint_frequency must be an integer >= 0, got {self.checkpoint_frequency}")
        if self.checkpoint_at_end is not None and not isinstance(self.checkpoint_at_end, bool):
            raise ConfigTypeError(
                f"checkpoint_at_end must be True, False or None, got {_describe(self.checkpoint_at_end)}"
            )

    def __repr__(self) -> str:
        return _short_repr(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        return {
            "num_to_keep": self.num_to_keep,
            "checkpoint_score_attribute": self.checkpoint_score_attribute,
            "checkpoint_score_order": self.checkpoint_score_order,
            "checkpoint_frequency": self.checkpoint_frequency,
            "checkpoint_at_end": self.checkpoint_at_end,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are ignored, bad values raise."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class FailureConfig:
    """How many times a failed worker group is restarted from the latest checkpoint (-1: without limit)."""

    max_failures: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.max_failures):
            raise ConfigTypeError(
                f"max_failures must be an integer >= -1 (-1 means unlimited), got {_describe(self.max_failures)}"
            )
        if self.max_failures < -1:
            raise ConfigError(
                f"max_failures must be an integer >= -1 (-1 means unlimited), got {self.max_failures}"
            )

    def __repr__(self) -> str:
        return _short_repr(self)


@dataclass
class ScalingConfig:
    """How many workers run the training loop, and with what resources.

    ``placement_strategy`` (Ray's names) says how the Ray executor places the workers: "PACK" on as few nodes
    as possible, "SPREAD" across as many as possible (both best effort: workers share a node when they must);
    "STRICT_PACK" all on one node, "STRICT_SPREAD" each on its own node (refused at start when the cluster has
    too few nodes; after a node is lost, a restart may find no room). The local executor runs every worker on
    this machine and ignores it.
    """

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: str = "PACK"

    def __post_init__(self) -> None:
        if not _is_int(self.num_workers):
            raise ConfigTypeError(f"num_workers must be an integer >= 1, got {_describe(self.num_workers)}")
        if self.num_workers < 1:
            raise ConfigError(f"num_workers must be an integer >= 1, got {self.num_workers}")
        if not isinstance(self.use_gpu, bool):
            raise ConfigTypeError(f"use_gpu must be True or False, got {_describe(self.use_gpu)}")
        if self.resources_per_worker is not None:
            if not isinstance(self.resources_per_worker, dict):
                raise ConfigTypeError(
                    "resources_per_worker must be None or a dict of resource name to amount, got "
                    f"{_describe(self.resources_per_worker)}"
                )
            for key, amount in self.resources_per_worker.items():
                if not isinstance(key, str) or not _is_amount(amount):
                    raise ConfigError(
                        "resources_per_worker must map resource names to finite amounts >= 0, got "
                        f"{key!r}: {amount!r}"
                    )
            if not self.use_gpu and self.resources_per_worker.get("GPU"):  # Ray's check, in Ray's words
                raise ConfigError(
                    "`use_gpu` is False but `GPU` was found in `resources_per_worker` "
                    f"({self.resources_per_worker!r}): pass use_gpu=True, or leave GPU out"
                )
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(f"placement_strategy must be one of {list(PLACEMENT_STRATEGIES)}, got "
                              f"{_describe(self.placement_strategy)}")

    def __repr__(self) -> str:
        return _short_repr(self)

    @property
    def total_resources(self) -> dict[str, float]:
        """Return the resources of all workers together, as Ray counts them.

        Each worker asks for ``resources_per_worker`` (amounts of 0 left out; one GPU added with ``use_gpu``
        when it names none), or by default one GPU with ``use_gpu`` and one CPU without; the total is that
        times ``num_workers``, e.g. ``{"GPU": 2.0}`` for two GPU workers. The driver asks for nothing.
        """
        if self.resources_per_worker is None:
            per_worker: dict[str, float] = {"GPU": 1} if self.use_gpu else {"CPU": 1}
        else:
            per_worker = {k: v for k, v in self.resources_per_worker.items() if v != 0}
            if self.use_gpu:
                per_worker.setdefault("GPU", 1)
        return {name: float(amount) * self.num_workers for name, amount in per_worker.items()}


def default_run_name(now: _dt.datetime | None = None) -> str:
    """Return a fresh run name from the local time, e.g. ``trainkeep_run-2026-11-26_22-41-43``."""
    now = now or _dt.datetime.now()
    return now.strftime("trainkeep_run-%Y-%m-%d_%H-%M-%S")


@dataclass
class RunConfig:
    """Where a run lives and how it keeps checkpoints and survives failures.

    Args:
        name: the run's directory name under ``storage_path``; None gives a fresh timestamped name, so an
            unnamed run never resumes another.
        storage_path: a local path or an fsspec URL (``s3://bucket/runs``); default ``~/trainkeep_results``.
        storage_filesystem: an fsspec filesystem (or a ``pyarrow.fs.FileSystem``, wrapped) for ``storage_path``.
        checkpoint_config: retention and checkpoint timing; default keeps every checkpoint.
        failure_config: worker-group restarts; default none.
        report_timeout_s: how long the ranks that reached a report round (or a collective) wait for the others.
        callbacks: :class:`trainkeep.UserCallback` objects called in the driver after every completed report
            round and after every failed attempt (e.g. :class:`trainkeep.TensorBoardCallback`).

    Raises:
        ConfigError / ConfigTypeError (ValueError / TypeError) naming the field, the value and what is allowed
        (a callback that is not a UserCallback is a ValueError, as in Ray).
    """

    name: str | None = None
    storage_path: str | os.PathLike | None = None
    storage_filesystem: Any = None
    checkpoint_config: CheckpointConfig | None = None
    failure_config: FailureConfig | None = None
    report_timeout_s: float | None = field(default=None)
    callbacks: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            from trainkeep._internal.core.layout import validate_run_name

            validate_run_name(self.name)
        if self.storage_path is not None:
            if not isinstance(self.storage_path, (str, os.PathLike)):
                raise ConfigTypeError(
                    f"storage_path must be a path or a URL string, got {_describe(self.storage_path)}"
                )
            self.storage_path = os.fspath(self.storage_path)
            if not self.storage_path:
                raise ConfigError("storage_path must be a path or a URL string, got ''")
        if self.storage_filesystem is not None and not _is_filesystem(self.storage_filesystem):
            raise ConfigTypeError(
                "storage_filesystem must be None, an fsspec filesystem or a pyarrow.fs.FileSystem, got "
                f"{_describe(self.storage_filesystem)}"
            )
        if self.checkpoint_config is None:
            self.checkpoint_config = CheckpointConfig()
        elif not isinstance(self.checkpoint_config, CheckpointConfig):
            raise ConfigTypeError(
                f"checkpoint_config must be a trainkeep.CheckpointConfig, got {_describe(self.checkpoint_config)}"
            )
        if self.failure_config is None:
            self.failure_config = FailureConfig()
        elif not isinstance(self.failure_config, FailureConfig):
            raise ConfigTypeError(
                f"failure_config must be a trainkeep.FailureConfig, got {_describe(self.failure_config)}"
            )
        if self.report_timeout_s is not None and (
            not isinstance(self.report_timeout_s, (int, float))
            or isinstance(self.report_timeout_s, bool)
            or not self.report_timeout_s > 0
        ):
            raise ConfigError(f"report_timeout_s must be None or a number > 0, got {self.report_timeout_s!r}")
        self._check_callbacks()

    def _check_callbacks(self) -> None:
        from trainkeep._internal.core.user_callback import UserCallback

        if self.callbacks is None:
            return
        if isinstance(self.callbacks, (str, bytes)) or not isinstance(self.callbacks, Sequence):
            raise ConfigError(f"callbacks must be None or a list of trainkeep.UserCallback, got "
                              f"{_describe(self.callbacks)}")
        for i, callback in enumerate(self.callbacks):
            if not isinstance(callback, UserCallback):
                raise ConfigError(f"callbacks must be None or a list of trainkeep.UserCallback, got "
                                  f"{_describe(callback)} at callbacks[{i}]")

    def __repr__(self) -> str:
        return _short_repr(self)


@dataclass
class ValidationTaskConfig:
    """How one validation runs: keyword arguments for the validation function, and its time limit.

    Given to :class:`ValidationConfig` as the defaults, or to ``report(..., validation=...)`` for one checkpoint
    (its ``fn_kwargs`` are merged over the defaults; its ``timeout_s``, when set, replaces the default).

    Args:
        fn_kwargs: keyword arguments passed to the validation function after the checkpoint.
        timeout_s: seconds the validation may run before it is stopped (status ``VALIDATION_TIMEOUT``);
            None: no limit.

    Raises:
        ConfigTypeError (a TypeError) when ``fn_kwargs`` is not a dict with string keys; ConfigError (a
        ValueError) when ``timeout_s`` is not None or a number > 0.
    """

    fn_kwargs: dict[str, Any] | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.fn_kwargs is not None and (
            not isinstance(self.fn_kwargs, dict) or not all(isinstance(k, str) for k in self.fn_kwargs)
        ):
            raise ConfigTypeError(
                f"fn_kwargs must be None or a dict with string keys, got {_describe(self.fn_kwargs)}"
            )
        if self.timeout_s is not None and not (
            isinstance(self.timeout_s, (int, float)) and not isinstance(self.timeout_s, bool)
            and math.isfinite(self.timeout_s) and self.timeout_s > 0
        ):
            raise ConfigError(f"timeout_s must be None or a number > 0, got {self.timeout_s!r}")


@dataclass
class ValidationConfig:
    """Asynchronous validation of reported checkpoints (``DataParallelTrainer(validation_config=...)``).

    ``fn(checkpoint, **fn_kwargs)`` runs in a process of its own, one validation at a time, while training goes
    on, for every checkpoint reported with ``report(..., validation=True)`` (or a ValidationTaskConfig). It
    returns a dict of metrics, which are merged into that checkpoint's metrics (and can change its rank).

    Args:
        fn: the validation function; it is shipped to its process with cloudpickle.
        task_config: the default ValidationTaskConfig (default: no kwargs, no time limit).
        ray_remote_kwargs: accepted for Ray Train compatibility (resources of Ray's validation task); the local
            executor runs the validation as a plain process and ignores it.

    Raises:
        ConfigTypeError (a TypeError) for a ``fn`` that is not callable, a ``task_config`` that is not a
        ValidationTaskConfig, or ``ray_remote_kwargs`` that is not None or a dict.
    """

    fn: Any
    task_config: ValidationTaskConfig | None = None
    ray_remote_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigTypeError(f"fn must be a function taking a checkpoint, got {_describe(self.fn)}")
        if self.task_config is None:
            self.task_config = ValidationTaskConfig()
        elif not isinstance(self.task_config, ValidationTaskConfig):
            raise ConfigTypeError(
                f"task_config must be None or a trainkeep.ValidationTaskConfig, got {_describe(self.task_config)}"
            )
        if self.ray_remote_kwargs is not None and not isinstance(self.ray_remote_kwargs, dict):
            raise ConfigTypeError(f"ray_remote_kwargs must be None or a dict, got {_describe(self.ray_remote_kwargs)}")
