"""What went wrong in an attempt, carried from the workers to the driver and out of ``fit()``."""

from __future__ import annotations

import pickle
import signal
import traceback
from dataclasses import dataclass, field

import cloudpickle

from trainkeep.errors import (
    ControllerError,
    InvalidReportError,
    InvalidReportTypeError,
    ReportTimeoutError,
    ReportTimeoutFailure,
    TrainingFailedError,
    WorkerGroupError,
)


def pack_exception(exc: BaseException) -> tuple[bytes, str]:
    """Return ``exc`` pickled, and its traceback as text.

    An exception that does not survive a pickle round trip (unpicklable state, or an ``__init__`` that pickle
    cannot call again) is replaced by a RuntimeError that carries its type name and message.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = cloudpickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        data = cloudpickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return data, text


def unpack_exception(data: bytes) -> BaseException:
    """Return the exception pickled by :func:`pack_exception` (a RuntimeError if it cannot be loaded here)."""
    try:
        exc = pickle.loads(data)
    except Exception as load_error:
        return RuntimeError(f"a worker's exception could not be unpickled in the driver: {load_error}")
    return exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))


def describe_exit(returncode: int | None) -> str:
    """Return how a worker process ended, e.g. ``killed by signal SIGKILL`` or ``exited with code 3``."""
    if returncode is None:
        return "is gone"
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class AttemptFailed(Exception):
    """One attempt of the worker group failed.

    ``failures`` maps each failed world rank to its exception, ``tracebacks`` to its traceback text; ``error``
    is the error that describes the whole attempt (the first rank's, or a driver-side one). ``retryable`` is
    False for bad input, which would fail again the same way.
    """

    error: BaseException
    retryable: bool
    failures: dict[int, BaseException] = field(default_factory=dict)
    tracebacks: dict[int, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"

    def to_training_error(self, attempts: int, max_failures: int) -> TrainingFailedError:
        """Return the error ``fit()`` raises once no retry is left (its ``__cause__`` is set by the caller)."""
        if self.failures:
            lines = [f"rank {rank} raised {type(exc).__name__}: {exc}" for rank, exc in sorted(self.failures.items())]
        else:
            lines = [f"{type(self.error).__name__}: {self.error}"]
        limit = "unlimited" if max_failures == -1 else str(max_failures)
        message = (f"training failed after {attempts} attempt(s) (FailureConfig.max_failures={limit}): "
                   + "; ".join(lines))
        for rank, text in sorted(self.tracebacks.items()):
            if text:
                message += f"\n\n--- traceback of rank {rank} ---\n{text.rstrip()}"
        cls = _error_class(self.error, self.retryable, bool(self.failures))
        if issubclass(cls, ControllerError):
            return cls(message, self.failures, self.tracebacks, self.error)
        return cls(message, self.failures, self.tracebacks)


def _error_class(error: BaseException, retryable: bool, by_workers: bool) -> type[TrainingFailedError]:
    """Return the class of the error ``fit()`` raises: a WorkerGroupError when workers failed, else a
    ControllerError (Ray Train's two subclasses), with the builtin of bad input or of a timeout mixed in."""
    if isinstance(error, ReportTimeoutError):
        return ReportTimeoutFailure
    if not retryable and isinstance(error, TypeError):
        return InvalidReportTypeError
    if not retryable and isinstance(error, ValueError):
        return InvalidReportError
    return WorkerGroupError if by_workers else ControllerError
