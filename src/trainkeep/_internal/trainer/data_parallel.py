"""DataParallelTrainer: run a training function on N worker processes and keep its checkpoints.

The driver (this process) is the controller and the only writer of the run: it holds the CheckpointManager
and the run lock, pairs the workers' reports into rounds, and commits them. Workers copy their checkpoint
files straight into the round's staged directory.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from trainkeep._internal.core.config import (
    DEFAULT_STORAGE_PATH,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    default_run_name,
)
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.engine.result import Result
from trainkeep._internal.storage import Storage, resolve
from trainkeep._internal.trainer import datasets as datasets_module
from trainkeep._internal.trainer import interrupt, sources
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer.callbacks import CallbackRunner
from trainkeep._internal.trainer.controller import Controller
from trainkeep._internal.trainer.datasets import DataConfig
from trainkeep._internal.trainer.executors import local_thread_env, place_workers, resolve_executor
from trainkeep._internal.trainer.failures import AttemptFailed
from trainkeep._internal.trainer.setup import WorkerSetup
from trainkeep._internal.trainer.validation import ValidationRunner, pickled_fn, validations_beside
from trainkeep.errors import ConfigError, ConfigTypeError

logger = logging.getLogger(__name__)

DEFAULT_REPORT_TIMEOUT_S = 600.0
"""How long the ranks that reached a report round wait for the others (``RunConfig.report_timeout_s``)."""

EXIT_TIMEOUT_S = 30.0
"""How long workers that returned get to exit on their own before they are killed."""


class DataParallelTrainer:
    """Run ``train_loop_per_worker`` on ``scaling_config.num_workers`` workers, on this machine or a Ray cluster.

    Args:
        train_loop_per_worker: the training function; it takes ``train_loop_config`` as its one argument, or
            no argument. It is shipped to the workers with cloudpickle, so closures and lambdas work.
        train_loop_config: a dict passed to the function.
        scaling_config: how many workers (default 1); ``resources_per_worker={"CPU": n}`` sets each worker's
            thread counts (see :func:`~trainkeep._internal.trainer.executors.local_thread_env`).
        run_config: where the run lives, what to keep, how many restarts (default: a fresh timestamped run
            under ``~/trainkeep_results``).
        executor: "local" (worker processes on this machine) or "ray" (Ray actors placed on the cluster this
            driver is connected to, see docs/clusters.md); None picks "ray" when ``ray.is_initialized()`` here,
            else "local", unless the environment variable ``TRAINKEEP_EXECUTOR`` names one.
        validation_config: how checkpoints reported with ``report(..., validation=True)`` are validated, in a
            process of their own while training goes on (see :mod:`trainkeep._internal.trainer.validation`).
        datasets: name -> dataset; each worker gets its shard from ``trainkeep.get_dataset_shard(name)``. Any
            executor takes a sized indexable (a numpy array, a list or tuple, a torch map-style Dataset or
            Tensor, a pandas DataFrame), split into contiguous blocks in rank order; ``executor="ray"`` also
            takes a ``ray.data.Dataset`` (or a function returning one), split per attempt with Ray Data's
            ``streaming_split`` (see :mod:`trainkeep._internal.trainer.datasets`).
        dataset_config: which datasets are split (``DataConfig(datasets_to_split=[...])``; default: all).

    Raises:
        ConfigTypeError / ConfigError (TypeError / ValueError) for bad arguments (an unknown executor, "ray"
        without Ray installed, and for the local executor ``resources_per_worker`` keys other than "CPU",
        which it cannot honour; a dataset the executor cannot shard, naming it), and a ValueError when the
        CheckpointConfig asks for ``checkpoint_frequency`` or ``checkpoint_at_end``, which a training function
        that owns its loop cannot honour: report a checkpoint from the loop instead.
    """

    _owns_loop = False  # subclasses that drive the loop themselves (TrainableTrainer) honour frequency/at_end
    _setup: WorkerSetup = WorkerSetup()
    # set by trainkeep.testing.injection.inject() only: wraps the driver's and every worker's storage
    _storage_wrapper: p.StorageWrapper | None = None
    # tests only: how each node of a Ray cluster sees the shared-storage probe (see backends/ray.py)
    _probe_view: Callable[[str, int], str] | None = None
    _callbacks: CallbackRunner | None = None  # the run's user callbacks, set by fit()
    _datasets = datasets_module.Prepared({}, [], {})  # the datasets ready to travel, set by fit()

    def __init__(self, train_loop_per_worker: Callable[..., Any], *, train_loop_config: dict[str, Any] | None = None,
                 scaling_config: ScalingConfig | None = None, run_config: RunConfig | None = None,
                 executor: str | None = None, validation_config: ValidationConfig | None = None,
                 datasets: dict[str, Any] | None = None, dataset_config: DataConfig | None = None) -> None:
        if not callable(train_loop_per_worker):
            raise ConfigTypeError(f"train_loop_per_worker must be a function, got {train_loop_per_worker!r}")
        if train_loop_config is not None and not isinstance(train_loop_config, dict):
            raise ConfigTypeError(f"train_loop_config must be None or a dict, got {type(train_loop_config).__name__}")
        if scaling_config is not None and not isinstance(scaling_config, ScalingConfig):
            raise ConfigTypeError(f"scaling_config must be a trainkeep.ScalingConfig, got {scaling_config!r}")
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise ConfigTypeError(f"run_config must be a trainkeep.RunConfig, got {run_config!r}")
        if validation_config is not None and not isinstance(validation_config, ValidationConfig):
            raise ConfigTypeError(f"validation_config must be None or a trainkeep.ValidationConfig, got "
                                  f"{validation_config!r}")
        self.validation_config = validation_config
        self.train_loop_per_worker = train_loop_per_worker
        self.train_loop_config = train_loop_config
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self._takes_config = takes_config(train_loop_per_worker)
        if not self._takes_config and train_loop_config is not None:
            raise ConfigError("train_loop_config was given, but train_loop_per_worker takes no argument; "
                              "define it as train_loop_per_worker(config)")
        self._check_checkpoint_timing()
        self.executor = resolve_executor(executor)
        self._thread_env = local_thread_env(self.scaling_config, self.executor)
        self.datasets = datasets_module.check(datasets, self.executor)
        self.dataset_config = datasets_module.check_config(dataset_config, self.executor)

    def _check_checkpoint_timing(self) -> None:
        config = self.run_config.checkpoint_config
        assert config is not None
        if self._owns_loop:
            return
        for field, value, bad in (("checkpoint_frequency", config.checkpoint_frequency, config.checkpoint_frequency > 0),
                                  ("checkpoint_at_end", config.checkpoint_at_end, config.checkpoint_at_end is True)):
            if bad:
                raise ConfigError(
                    f"CheckpointConfig({field}={value!r}) does not apply to a training function, which owns its "
                    "loop: report a checkpoint from the loop instead, e.g. trainkeep.report(metrics, "
                    "checkpoint=trainkeep.Checkpoint.from_directory(d)) every N epochs and after the last one; "
                    "or use a trainer whose loop trainkeep drives (TrainableTrainer, trainkeep.xgboost.XGBoostTrainer, "
                    "trainkeep.lightgbm.LightGBMTrainer, trainkeep.lightning.LightningTrainer, "
                    "trainkeep.huggingface.transformers.TransformersTrainer)."
                )

    # ------------------------------------------------------------------------------------------ fit

    def fit(self) -> Result:
        """Run the training function on every worker until it returns; restart from the latest checkpoint on
        failure, up to ``FailureConfig.max_failures`` times. Resumes the run if it exists already.

        Returns the run's Result. If the driver dies inside, every committed checkpoint is intact and the next
        ``fit()`` on the same run resumes from the newest; half-written rounds are swept then.

        Raises:
            TrainingFailedError carrying each failed rank's exception and traceback (also a TypeError /
            ValueError when a report was invalid, a ReportTimeoutError when ranks reported unevenly);
            RunLockedError when another writer holds the run; TypeError when the function cannot be pickled;
            TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C, once the workers are stopped and the run is
            closed, saying what was committed (uncaught, it prints that one line and no traceback).
        """
        try:
            # 1. Pickle what the workers need; nothing is written if that fails.
            storage_path = self.run_config.storage_path or DEFAULT_STORAGE_PATH
            run_url = self._run_url(str(storage_path))
            self._datasets = datasets_module.prepare(self.datasets, self.scaling_config.num_workers,
                                                     self.dataset_config)
            spec = self._pickled_spec(str(storage_path), run_url)
            if self.executor == "ray":  # connect, and refuse what the cluster could never hold, before any write
                from trainkeep._internal.trainer.backends import ray as ray_backend

                ray_backend.preflight(self.scaling_config)
            if self.validation_config is not None:
                pickled_fn(self.validation_config)  # an unpicklable function fails here, before any write
            # 2. Open the run: resume it if it exists, take its lock.
            with _without_manager_resume_line():
                manager = CheckpointManager(run_url, self.run_config.checkpoint_config,
                                            self.run_config.storage_filesystem, storage=self._driver_storage(run_url))
        except KeyboardInterrupt:
            raise interrupt.interrupted(interrupt.summary(None)) from None
        # 3. Run attempts until one succeeds, the input is bad, or no retries are left; then let the pending
        #    validations end (a validation cut short stays pending in the run index, for the next fit()).
        self._callbacks = CallbackRunner.for_run(self.run_config, self.train_loop_config, self.scaling_config,
                                                 manager)
        try:
            value = self._run_with_validations(manager, spec)
            result = _result(manager, value)
        except KeyboardInterrupt:  # Ctrl-C: the workers are gone, unfinished rounds swept; say what is committed
            with interrupt.sigint_ignored():
                line = interrupt.summary(manager)
                manager.close("failed")
            raise interrupt.interrupted(line) from None
        except BaseException:
            manager.close("failed")
            raise
        finally:
            self._callbacks.close()
        manager.close("finished")
        return result

    def _driver_storage(self, run_url: str) -> Storage | None:
        """Return the driver's storage wrapped for a test, or None (the manager's own) when no wrapper is set."""
        if self._storage_wrapper is None:
            return None
        return self._storage_wrapper(resolve(run_url, self.run_config.storage_filesystem)[0], "driver")

    def _run_url(self, storage_path: str) -> str:
        name = self.run_config.name
        if name is None:  # a fresh name per fit(), never one that exists: an unnamed run never resumes another
            storage, root = resolve(storage_path, self.run_config.storage_filesystem)
            base = name = default_run_name()
            suffix = 1
            while storage.exists(storage.join(root, name)):
                suffix += 1
                name = f"{base}_{suffix}"
        self._name = name
        return f"{storage_path.rstrip('/')}/{name}"

    def _pickled_spec(self, storage_path: str, run_url: str) -> bytes:
        storage, run_path = resolve(run_url, self.run_config.storage_filesystem)
        assert self.run_config.checkpoint_config is not None  # RunConfig fills in the default
        spec = p.WorkerSpec(
            self.train_loop_per_worker, self.train_loop_config, self._takes_config, self.scaling_config.num_workers,
            self._name, storage_path, run_path, storage.fs, self.run_config.checkpoint_config, self._setup,
            self.scaling_config.use_gpu, self._storage_wrapper, sources.code_files(self.train_loop_per_worker),
            validation=self.validation_config is not None,
            datasets=self._datasets.whole,
        )
        try:
            return cloudpickle.dumps(spec)
        except Exception as exc:
            raise ConfigTypeError(
                "train_loop_per_worker, train_loop_config and datasets must be picklable with cloudpickle to reach the "
                f"worker processes: {type(exc).__name__}: {exc}"
            ) from exc

    def _run_with_validations(self, manager: CheckpointManager, spec: bytes) -> Any:
        with validations_beside(manager, self.validation_config) as runner:
            return self._run_attempts(manager, spec, runner)

    def _run_attempts(self, manager: CheckpointManager, spec: bytes, runner: ValidationRunner | None) -> Any:
        """Start the worker group from the latest checkpoint until an attempt succeeds; return rank 0's value."""
        failure_config = self.run_config.failure_config
        assert failure_config is not None
        max_failures, failures = failure_config.max_failures, 0
        while True:
            start = manager.resume_checkpoint()
            if failures == 0 and manager.next_round > 0:
                logger.info("resuming run %s from %s (next report index %d)", manager.path,
                            f"checkpoint {start.path}" if start else "no checkpoint", manager.next_round)
            manager.protected = {_name_of(start)} if start else set()
            if failures:  # what only the failed attempt's start protected goes now, as Ray keeps num_to_keep
                manager.retain()
            try:
                return self._attempt(manager, spec, start, failures, runner)
            except AttemptFailed as failed:
                if not failed.retryable or (max_failures != -1 and failures >= max_failures):
                    raise failed.to_training_error(failures + 1, max_failures) from failed.error
                failures += 1
                logger.warning("worker group failed (%s); restart %d of %s from the latest checkpoint",
                               _first_line(str(failed)), failures, "unlimited" if max_failures == -1 else max_failures)
            finally:
                manager.protected = set()

    def _attempt(self, manager: CheckpointManager, spec: bytes, start: Checkpoint | None, attempt: int,
                 runner: ValidationRunner | None = None) -> Any:
        """Run one worker group to its end; on any exit, kill what is left, then sweep unfinished rounds."""
        world_size = self.scaling_config.num_workers
        timeout = self.run_config.report_timeout_s or DEFAULT_REPORT_TIMEOUT_S
        # the controller sees only the WorkerGroup interface
        group, layout = place_workers(self.executor, self.scaling_config, manager, self._probe_view)
        try:
            if self._datasets.ray:  # a fresh split for every attempt: the old iterators went with the old group
                from trainkeep._internal.trainer.backends import ray as ray_backend

                assert isinstance(group, ray_backend.RayWorkerGroup)  # the only executor that accepts them
                group.split_datasets(self._datasets.ray, self.dataset_config)
            group.start([{**self._thread_env, **env} for env in self._setup.placed_envs(layout)])
        except BaseException:
            group.kill()
            raise
        controller = Controller(manager, group, world_size, timeout, start.path if start else None,
                                callbacks=self._callbacks, validations=runner)
        try:
            for rank in range(world_size):
                placement = layout.placements[rank] if self.executor == "ray" else None
                group.send(rank, p.Boot(list(sys.path), spec, rank, start.path if start else None, attempt,
                                        placement, self._datasets.per_rank[rank]))
            value = controller.run()
            group.join(EXIT_TIMEOUT_S)
            return value
        finally:
            with interrupt.sigint_ignored():  # a second Ctrl-C must not cut the clean-up short
                group.kill()  # first: no worker may still write into a directory that is about to be swept
                controller.discard()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train_loop_per_worker={getattr(self.train_loop_per_worker, '__name__', '?')}, "
                f"num_workers={self.scaling_config.num_workers})")


def takes_config(fn: Callable[..., Any]) -> bool:
    """Return True when ``fn`` is called with the config, False when with nothing.

    Raises:
        ConfigError (a ValueError) when ``fn`` can be called neither with one argument nor with none.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    for args in ((None,), ()):
        try:
            signature.bind(*args)
            return bool(args)
        except TypeError:
            continue
    raise ConfigError(f"train_loop_per_worker must take one argument (the config) or none, got {fn!r} "
                      f"with signature {signature}")


def _first_line(text: str) -> str:
    """Return the first line of ``text`` (log lines stay one line each), marking that more was cut."""
    first, _, rest = text.partition("\n")
    return first + (" [...]" if rest.strip() else "")


def _name_of(checkpoint: Checkpoint) -> str:
    return checkpoint.path.rstrip("/").rpartition("/")[2]


def _result(manager: CheckpointManager, value: Any) -> Result:
    history = manager.history
    return Result(
        metrics=dict(history[-1]["metrics"]) if history else None,
        checkpoint=manager.latest_checkpoint,
        path=manager.path,
        filesystem=manager.storage.fs,
        best_checkpoints=manager.best_checkpoints,
        return_value=value,
        history=history,
    )


class _DropResumeLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("resuming run")


@contextlib.contextmanager
def _without_manager_resume_line() -> Iterator[None]:
    """Silence the manager's own "resuming run" line: the trainer logs one that names the checkpoint."""
    manager_logger = logging.getLogger("trainkeep._internal.engine.manager")
    drop = _DropResumeLine()
    manager_logger.addFilter(drop)
    try:
        yield
    finally:
        manager_logger.removeFilter(drop)
