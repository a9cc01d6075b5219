"""The exception hierarchy.

Every error trainkeep raises derives from :class:`TrainkeepError` and from the builtin a Python user would
catch for the same mistake (``ValueError`` for a bad value, ``TypeError`` for a bad type, ``OSError`` for a
failed storage operation), so ``except ValueError`` keeps working for code written against Ray Train.
"""

from __future__ import annotations

import errno as _errno


class TrainkeepError(Exception):
    """Base class of every error raised by trainkeep."""


class ConfigError(TrainkeepError, ValueError):
    """A configuration value is out of range; the message names the field, the value and what is allowed."""


class ConfigTypeError(TrainkeepError, TypeError):
    """A configuration value has the wrong type; the message names the field, the value and what is allowed."""


class InvalidCheckpointNameError(TrainkeepError, ValueError):
    """A checkpoint directory name is not allowed (separators, ``..``, NUL, reserved prefixes, too long)."""


class UnsupportedCheckpointFileError(TrainkeepError, ValueError):
    """An entry of a reported checkpoint directory cannot be stored and restored exactly as it is.

    Its name (not UTF-8, control characters, ``\\``, reserved, too long), its kind (FIFO, device, socket,
    dangling symlink, symlink loop) or its content (the run itself) is refused before anything is written.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot checkpoint {path!r}: {reason}")

    def __reduce__(self):  # keep it picklable across worker processes
        return (type(self), (self.path, self.reason))


class CheckpointExistsError(TrainkeepError, FileExistsError):
    """A checkpoint directory name is already taken in this run; it is never overwritten."""


class InvalidMetricsError(TrainkeepError, ValueError, TypeError):
    """Reported metrics are not a flat-or-nested dict of JSON-serialisable values with string keys.

    Both a ``ValueError`` (what Ray Train raises for a tensor in metrics) and a ``TypeError`` (what trainkeep
    raised before), so either ``except`` keeps working.
    """


class ScoreTypeError(TrainkeepError, TypeError):
    """The score attribute in a report is present but is not a real number."""


class RunLockedError(TrainkeepError, RuntimeError):
    """Another live writer holds the run."""

    def __init__(self, run_path: str, holder: dict | None) -> None:
        self.run_path = run_path
        self.holder = holder or {}
        who = describe_holder(self.holder)
        super().__init__(
            f"run {run_path} is already held by {who}; only one trainer or CheckpointManager may write to a "
            "run at a time. Stop the other writer, or use a different RunConfig(name=...)."
        )


class RunNotFoundError(TrainkeepError, FileNotFoundError, RuntimeError):
    """The path holds no trainkeep run; also a ``RuntimeError``, as Ray Train raises for a missing run."""


class CorruptRunError(TrainkeepError, ValueError):
    """A file of ours (run index, manifest, history) cannot be parsed or fails validation."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class IncompatibleRunError(TrainkeepError, RuntimeError):
    """The run was written by a newer trainkeep whose format this version cannot read safely."""


class StorageError(TrainkeepError, OSError):
    """A storage operation failed; carries the errno (when known) and the path."""

    def __init__(self, op: str, path: str, cause: BaseException | None = None, errno: int | None = None) -> None:
        if errno is None and isinstance(cause, OSError):
            errno = cause.errno
        self.op = op
        self.path = path
        self.cause = cause
        code = f" [{_errno.errorcode.get(errno, errno)}]" if errno else ""
        detail = f": {cause}" if cause is not None else ""
        OSError.__init__(self, errno or 0, f"{op} failed for {path}{code}{detail}")
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()

    def __reduce__(self):  # keep it picklable across worker processes
        return (type(self), (self.op, self.path, None, self.errno))


class ChecksumMismatchError(TrainkeepError, OSError):
    """A checkpoint file does not match the size or checksum recorded in its manifest."""


class SessionError(TrainkeepError, RuntimeError):
    """A session function was called outside of a training run."""


class DatasetNotFoundError(TrainkeepError, KeyError):
    """``get_dataset_shard(name)`` named no dataset of the trainer (a KeyError, as in Ray Train)."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


class TrainingFailedError(TrainkeepError, RuntimeError):
    """The training run failed and no retries are left.

    ``worker_failures`` maps each failed world rank to its exception; ``tracebacks`` holds each one's formatted
    traceback as text.
    """

    def __init__(
        self,
        message: str,
        worker_failures: dict[int, BaseException] | None = None,
        tracebacks: dict[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.worker_failures = dict(worker_failures or {})
        self.tracebacks = dict(tracebacks or {})

    def __reduce__(self):
        return (type(self), (self.args[0], self.worker_failures, self.tracebacks))


class WorkerGroupError(TrainingFailedError):
    """Training failed because workers failed (raised, died, or a background upload failed), as in Ray Train.

    ``worker_failures`` maps each failed world rank to its exception.
    """


class ControllerError(TrainingFailedError):
    """Training failed in the driver (a storage error while committing, a report timeout), as in Ray Train.

    ``controller_failure`` is that error.
    """

    def __init__(
        self,
        message: str,
        worker_failures: dict[int, BaseException] | None = None,
        tracebacks: dict[int, str] | None = None,
        controller_failure: BaseException | None = None,
    ) -> None:
        super().__init__(message, worker_failures, tracebacks)
        self.controller_failure = controller_failure

    def __reduce__(self):
        return (type(self), (self.args[0], self.worker_failures, self.tracebacks, self.controller_failure))


class TrainingInterrupted(KeyboardInterrupt):
    """``fit()`` was interrupted (Ctrl-C): its workers are stopped and the run is closed; the message says what
    was committed. A KeyboardInterrupt, not a TrainkeepError, so that ``except Exception`` never swallows it."""


class ReportTimeoutError(TrainkeepError, TimeoutError):
    """Some workers did not reach a report round in time (uneven ``report()`` calls, or a hung worker)."""


class InconsistentReportError(TrainkeepError, ValueError):
    """The ranks' reports of one round disagree (checkpoint names) or collide (a file of one is a directory of another)."""


class InvalidReportError(WorkerGroupError, ValueError):
    """The run failed on a bad value passed to ``report()`` (also a ValueError); it is never retried."""


class InvalidReportTypeError(WorkerGroupError, TypeError):
    """The run failed on a value of the wrong type passed to ``report()`` (also a TypeError); never retried."""


class ReportTimeoutFailure(ControllerError, ReportTimeoutError):
    """The run failed because some ranks did not reach a report round (also a ReportTimeoutError)."""


class CheckpointNotFoundError(TrainkeepError, FileNotFoundError):
    """A checkpoint's directory does not exist (a local one to report, or one on storage to read)."""


class CheckpointNotADirectoryError(TrainkeepError, NotADirectoryError):
    """A path given as a checkpoint directory is a file or something else that is not a directory."""


class CliError(TrainkeepError, RuntimeError):
    """An error the ``trainkeep`` command reports as one line on stderr, with its own exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # keep it picklable
        return (type(self), (str(self), self.exit_code))


class MetadataError(TrainkeepError, TypeError):
    """Checkpoint metadata is not a dict of JSON-serialisable values."""


class CollectiveMismatchError(TrainkeepError, ValueError):
    """The ranks called different collectives at the same point (one barrier(), another broadcast)."""


class WorkerStartError(TrainkeepError, OSError):
    """A worker of an executor could not be started, placed or connected to the driver."""


class PlacementTimeoutError(WorkerStartError, TimeoutError):
    """A Ray cluster that could hold the workers did not free the resources for them in time."""


class MissingDependencyError(TrainkeepError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class NotAPathError(TrainkeepError, TypeError):
    """A Checkpoint was used where a path is expected (``os.fspath``); the message says what to use instead."""


class NotOverriddenError(TrainkeepError, NotImplementedError):
    """A method that a subclass must implement (``Trainable.step`` and the like) was not overridden."""


class NoCheckpointError(TrainkeepError, RuntimeError):
    """A run has no checkpoint to answer with (also a RuntimeError, as Ray Train raises)."""


def describe_holder(holder: dict) -> str:
    """Return a one-line description of a lock holder record."""
    if not holder:
        return "another writer"
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host"):
        parts.append(f"on host {holder['host']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return " ".join(parts)
