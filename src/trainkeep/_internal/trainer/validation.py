"""Asynchronous validation of committed checkpoints (Ray Train's ``ValidationConfig``), on the driver's side.

A checkpoint reported with ``report(..., validation=True)`` (or a ValidationTaskConfig) is marked
``PENDING_VALIDATION`` in the run index as soon as its round is committed, and queued. One background thread of
the driver runs the queue, one validation at a time (as Ray does): each in a fresh interpreter of its own
(``subprocess``, not ``multiprocessing``'s spawn, which would re-import the user's ``__main__``), so neither the
driver nor a worker waits for it. The thread writes the outcome through the manager, which serialises it with
the commits of the training that goes on meanwhile:

* the function returned a dict: ``VALIDATED``, its metrics merged into the checkpoint's (retention re-ranks);
* it raised, returned something else, or returned metrics that cannot be stored: ``VALIDATION_FAILED``;
* it ran past ``timeout_s``: its process group is killed, ``VALIDATION_TIMEOUT``.

Neither failure fails the run; each is logged. A pending checkpoint is never deleted by retention. When the run
stops before a validation ends (a failure, Ctrl-C, a killed driver), the checkpoint stays pending in the run
index, and the next ``fit()`` of the run queues it again.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle

import trainkeep.errors
from trainkeep._internal.core.config import ValidationConfig, ValidationTaskConfig
from trainkeep._internal.core.metrics import check_score, normalize_metrics
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep.errors import ConfigError, ConfigTypeError, InvalidMetricsError

if TYPE_CHECKING:
    from trainkeep._internal.engine.manager import CheckpointManager

logger = logging.getLogger(__name__)


class ValidationStatus(str, enum.Enum):
    """Where a checkpoint's validation stands (the validation members of Ray's ``ReportedCheckpointStatus``)."""

    PENDING_VALIDATION = "PENDING_VALIDATION"
    VALIDATED = "VALIDATED"
    VALIDATION_TIMEOUT = "VALIDATION_TIMEOUT"
    VALIDATION_FAILED = "VALIDATION_FAILED"


Requested = bool | ValidationTaskConfig
"""What ``report(validation=...)`` takes: True (the defaults) or a ValidationTaskConfig for this checkpoint."""


def check_requested(validation: Any, has_checkpoint: bool, configured: bool) -> Requested:
    """Check ``report()``'s ``validation`` argument on a worker; return it.

    Raises:
        ConfigTypeError (a TypeError) for a value that is not a bool or a ValidationTaskConfig; ConfigError (a
        ValueError) when a validation is requested without a checkpoint, or on a trainer without a
        ``validation_config`` (Ray Train's messages).
    """
    if not isinstance(validation, (bool, ValidationTaskConfig)):
        raise ConfigTypeError(f"validation must be True, False or a trainkeep.ValidationTaskConfig, got "
                              f"{validation!r} ({type(validation).__name__})")
    if validation is False:
        return False
    if not has_checkpoint:
        raise ConfigError("Validation requires a checkpoint to be provided. report(validation=...) was given "
                          "without a checkpoint.")
    if not configured:
        raise ConfigError("`validation_config` was not set on the trainer, but a validation was requested. Pass "
                          "DataParallelTrainer(..., validation_config=trainkeep.ValidationConfig(fn)).")
    return validation


def status_of(validation: dict[str, Any] | None) -> ValidationStatus | None:
    """Return the status of a run index entry's ``validation`` state (None: no validation was requested)."""
    return None if validation is None else ValidationStatus(validation["status"])


def task_of(config: ValidationConfig, requested: Requested | dict[str, Any] | None) -> tuple[dict[str, Any],
                                                                                          float | None]:
    """Return the keyword arguments and time limit of one validation: the report's merged over the defaults.

    ``requested`` is what the report passed, or its persisted form (a dict, or None for the defaults).
    """
    default = config.task_config or ValidationTaskConfig()
    if isinstance(requested, dict):
        requested = ValidationTaskConfig(requested.get("fn_kwargs"), requested.get("timeout_s"))
    kwargs = dict(default.fn_kwargs or {})
    timeout = default.timeout_s
    if isinstance(requested, ValidationTaskConfig):
        kwargs.update(requested.fn_kwargs or {})
        timeout = requested.timeout_s if requested.timeout_s is not None else timeout
    return kwargs, timeout


def persisted(requested: Requested, name: str) -> dict[str, Any] | None:
    """Return the report's ValidationTaskConfig as JSON for the run index (None for the defaults).

    Keyword arguments that are not JSON values cannot be persisted (the index is JSON only): a resumed
    validation then runs with the defaults' keyword arguments, which is logged here.
    """
    if not isinstance(requested, ValidationTaskConfig):
        return None
    task: dict[str, Any] = {"fn_kwargs": requested.fn_kwargs, "timeout_s": requested.timeout_s}
    try:
        json.dumps(task, allow_nan=True)
    except (TypeError, ValueError):
        logger.warning("the fn_kwargs of checkpoint %s's validation are not JSON values, so the run index keeps "
                       "only its timeout: if the run stops before this validation ends, the resumed validation "
                       "runs with the ValidationConfig's default fn_kwargs", name)
        task["fn_kwargs"] = None
    return task


class ValidationRunner:
    """Run the validations of one ``fit()`` in the background, one at a time, and record their outcomes.

    Args:
        manager: the run's open manager (outcomes go through it).
        config: the trainer's ValidationConfig.
    """

    def __init__(self, manager: CheckpointManager, config: ValidationConfig) -> None:
        self.manager, self.config = manager, config
        self._fn = pickled_fn(config)
        self._queue: collections.deque[tuple[str, Requested | dict[str, Any] | None]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="trainkeep-validation", daemon=True)

    def start(self) -> None:
        """Queue the validations a previous run left pending (in round order), and start the thread."""
        for name, state in self.manager.validations().items():
            if state["status"] == ValidationStatus.PENDING_VALIDATION:
                logger.info("queueing the validation of checkpoint %s again: it was pending when the run stopped",
                            name)
                self._queue.append((name, state.get("task")))
        self._thread.start()

    def request(self, name: str, requested: Requested) -> None:
        """Mark the just committed checkpoint ``name`` pending in the run index, and queue its validation.

        Raises:
            StorageError when the run index cannot be written (the round is committed; the validation is not).
        """
        self.manager.update_validation(name, {"status": ValidationStatus.PENDING_VALIDATION.value,
                                              "task": persisted(requested, name), "metrics": {}})
        with self._cond:
            self._queue.append((name, requested))
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every queued validation has ended (as Ray does before a run ends)."""
        with self._cond:
            while (self._queue or self._busy) and self._thread.is_alive():
                self._cond.wait(1.0)

    def stop(self) -> None:
        """Stop the thread and kill a running validation; what did not end stays pending in the run index."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            if self._proc is not None:
                _killpg(self._proc)
        if self._thread.is_alive():
            self._thread.join()

    # ------------------------------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                name, requested = self._queue.popleft()
                self._busy = True
            try:
                self._validate(name, requested)
            except Exception:  # an outcome that cannot be written stays pending: the next fit() retries it
                logger.exception("could not record the validation of checkpoint %s; it stays pending", name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _validate(self, name: str, requested: Requested | dict[str, Any] | None) -> None:
        """Run one validation to its end and record the outcome (nothing, when the runner is stopping)."""
        if name not in self.manager.validations():
            logger.warning("checkpoint %s is gone from the run; its validation is dropped", name)
            return
        kwargs, timeout = task_of(self.config, requested)
        outcome = self._run_process(self.manager.storage.join(self.manager.path, name), kwargs, timeout)
        if outcome is None:
            return
        status, metrics, error = outcome
        if status is ValidationStatus.VALIDATED:
            try:
                metrics = normalize_metrics(metrics)
                check_score(metrics, self.manager.config.checkpoint_score_attribute)
            except (TypeError, ValueError) as exc:
                status, metrics, error = ValidationStatus.VALIDATION_FAILED, {}, f"{type(exc).__name__}: {exc}"
        task = self.manager.validations().get(name, {}).get("task")
        state: dict[str, Any] = {"status": status.value, "task": task, "metrics": metrics}
        if error is not None:
            state["error"] = error
            logger.warning("validation of checkpoint %s: %s (%s); the run goes on", name, status.value, error)
        else:
            logger.info("validation of checkpoint %s: %s %s", name, status.value, metrics)
        self.manager.update_validation(name, state)

    def _run_process(self, path: str, kwargs: dict[str, Any], timeout: float | None
                     ) -> tuple[ValidationStatus, dict[str, Any], str | None] | None:
        """Run the function on checkpoint ``path`` in its own process; return (status, metrics, error).

        Returns None when the runner was stopped meanwhile (the validation stays pending).
        """
        try:  # cloudpickle: the kwargs may hold closures, as the function may
            job = cloudpickle.dumps((path, self.manager.storage.fs, kwargs))
        except Exception as exc:
            return ValidationStatus.VALIDATION_FAILED, {}, f"its fn_kwargs cannot be pickled: {type(exc).__name__}: {exc}"
        with tempfile.TemporaryDirectory(prefix="trainkeep-validation-") as tmp:
            result_path = os.path.join(tmp, "result.json")
            payload = pickle.dumps((list(sys.path), self._fn, job))
            with self._cond:
                if self._stopping:
                    return None
                self._proc = _start(result_path)
            proc = self._proc
            try:
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):  # a process that died at once fails below
                    proc.stdin.write(payload)
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _killpg(proc)
                    proc.wait()
                    if self._stopping:
                        return None
                    return ValidationStatus.VALIDATION_TIMEOUT, {}, f"still running after {timeout:g} s; stopped"
            finally:
                with self._cond:
                    self._proc = None
            if self._stopping:
                return None
            return _read_result(result_path, proc.returncode)


@contextlib.contextmanager
def validations_beside(manager: CheckpointManager, config: ValidationConfig | None) -> Iterator[ValidationRunner | None]:
    """Run ``config``'s validations beside the attempts of a run: yield the started runner (None without a
    config, with a warning for any validation an earlier run left pending); on a normal exit wait for the queued
    validations, and on any exit stop the runner (a validation cut short stays pending in the run index)."""
    if config is None:
        pending = [n for n, v in manager.validations().items() if v["status"] == "PENDING_VALIDATION"]
        if pending:
            logger.warning("run %s has checkpoints whose validation is pending (%s), but no validation_config "
                           "was given: they stay pending (and are kept)", manager.path, ", ".join(pending))
        yield None
        return
    runner = ValidationRunner(manager, config)
    runner.start()  # also re-queues what an earlier attempt left pending
    try:
        yield runner
        runner.drain()  # the run ends once its validations have
    finally:
        runner.stop()


def pickled_fn(config: ValidationConfig) -> bytes:
    """Return the validation function pickled with cloudpickle, for its processes.

    Raises:
        ConfigTypeError (a TypeError) when it cannot be pickled.
    """
    try:
        return cloudpickle.dumps(config.fn)
    except Exception as exc:
        raise ConfigTypeError(f"ValidationConfig.fn must be picklable with cloudpickle to run in its own process: "
                              f"{type(exc).__name__}: {exc}") from exc


def _read_result(result_path: str, returncode: int) -> tuple[ValidationStatus, dict[str, Any], str | None]:
    try:
        with open(result_path, "rb") as f:
            result = json.loads(f.read())
    except (OSError, ValueError):
        return ValidationStatus.VALIDATION_FAILED, {}, f"the validation process exited with code {returncode} " \
                                                       "without a result"
    if result.get("ok"):
        return ValidationStatus.VALIDATED, result["metrics"], None
    logger.debug("validation traceback:\n%s", result.get("traceback", ""))
    return ValidationStatus.VALIDATION_FAILED, {}, str(result.get("error"))


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(trainkeep.errors.__file__)))
_BOOTSTRAP = ("import sys; from trainkeep._internal.trainer.validation import run_child; "
              "run_child(sys.argv[1], int(sys.argv[2]))")


def _start(result_path: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, result_path, str(os.getpid())], stdin=subprocess.PIPE,
                            env=env,
                            start_new_session=True)


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def run_child(result_path: str, driver_pid: int) -> None:
    """Run one validation in this (fresh) process: read the job from stdin, write the outcome as JSON.

    The process (and what it started) ends when the driver dies: nobody would read its outcome, and the next
    ``fit()`` of the run validates the checkpoint again.
    """
    threading.Thread(target=_exit_with_driver, args=(driver_pid,), daemon=True).start()
    sys_path, fn_bytes, job = pickle.loads(sys.stdin.buffer.read())
    sys.path[:] = sys_path
    try:
        fn = cloudpickle.loads(fn_bytes)
        path, filesystem, kwargs = cloudpickle.loads(job)
        metrics = fn(Checkpoint(path, filesystem), **kwargs)
        if not isinstance(metrics, dict):
            raise InvalidMetricsError(f"the validation function must return a dict of metrics, got "
                             f"{type(metrics).__name__}: {metrics!r}")
        result: dict[str, Any] = {"ok": True, "metrics": normalize_metrics(metrics)}
    except BaseException as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, allow_nan=True)
    os.replace(tmp, result_path)


def _exit_with_driver(driver_pid: int) -> None:
    while os.getppid() == driver_pid:
        time.sleep(0.5)
    with contextlib.suppress(OSError):
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)
