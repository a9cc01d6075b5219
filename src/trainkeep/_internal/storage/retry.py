"""Retries of remote operations: exponential backoff on transient errors, at once a typed error on permanent ones.

Transient: throttling (SlowDown, 429, 503), server errors (5xx), timeouts, connection resets. Permanent:
everything else, e.g. AccessDenied (403), NoSuchBucket and any 404 on a write, invalid requests (400).
A missing object on a read is not an error of the store: it stays a FileNotFoundError for the caller.
"""

from __future__ import annotations

import errno as _errno
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from trainkeep.errors import StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "ConditionalRequestConflict", "OperationAborted",
})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_ERRNOS = frozenset({
    _errno.ETIMEDOUT, _errno.ECONNRESET, _errno.ECONNABORTED, _errno.ECONNREFUSED, _errno.EPIPE,
    _errno.EAGAIN, _errno.EBUSY, getattr(_errno, "EREMOTEIO", _errno.EIO),
})
TRANSIENT_TYPES = frozenset({
    "HTTPClientError", "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
    "ConnectTimeoutError", "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError",
    "ServerTimeoutError", "FSTimeoutError", "IncompleteRead", "ResponseParserError", "ProxyConnectionError",
})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` tries in all, the n-th retry after a random delay
    of up to ``base_s * 2**n`` seconds (capped at ``cap_s``), "full jitter" so that writers spread out; and no
    retry that would start more than ``deadline_s`` seconds after the first attempt did (so an operation
    fails within ``deadline_s`` plus one attempt, however slowly each attempt fails)."""

    attempts: int = 6
    base_s: float = 0.2
    cap_s: float = 10.0
    deadline_s: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def delays(self) -> Iterator[float]:
        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.cap_s, self.base_s * 2**n))


@dataclass(frozen=True)
class RemoteFailure:
    """What an exception says about the store: its code (e.g. "NoSuchBucket"), HTTP status and errno."""

    code: str | None
    status: int | None
    errno: int | None
    transient: bool

    def describe(self) -> str:
        parts = [p for p in (self.code, f"HTTP {self.status}" if self.status else None) if p]
        return ", ".join(parts)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> RemoteFailure:
    """Return what ``exc`` (or an exception it was raised from) says about the remote store."""
    code = status = err = None
    transient = False
    for item in _chain(exc):
        response = getattr(item, "response", None)
        if isinstance(response, dict) and code is None:
            code = response.get("Error", {}).get("Code") or None
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, str) and code.isdigit() and status is None:
                status = int(code)
        if isinstance(item, OSError) and item.errno and err is None:
            err = item.errno
        names = {cls.__name__ for cls in type(item).__mro__}
        if names & TRANSIENT_TYPES or isinstance(item, (TimeoutError, ConnectionError)):
            transient = True
    if code is not None or status is not None:
        transient = code in TRANSIENT_CODES or status in TRANSIENT_STATUS
    elif err in TRANSIENT_ERRNOS:
        transient = True
    return RemoteFailure(code, status, err, transient)


def is_missing(exc: BaseException) -> bool:
    """Return True when ``exc`` says the object (not the bucket) does not exist."""
    failure = classify(exc)
    if failure.code in ("NoSuchBucket", "AccessDenied"):
        return False
    return isinstance(exc, FileNotFoundError) or failure.code in ("NoSuchKey", "404", "NotFound")


def is_precondition_failed(exc: BaseException) -> bool:
    """Return True when ``exc`` is a failed conditional request (HTTP 412)."""
    failure = classify(exc)
    return failure.status == 412 or failure.code == "PreconditionFailed"


def storage_error(op: str, path: str, exc: BaseException, attempts: int = 1,
                  seconds: float | None = None) -> StorageError:
    """Return a StorageError for ``op`` on ``path`` that names the store's code and errno."""
    failure = classify(exc)
    detail = failure.describe()
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    tries += f" in {seconds:.1f} s" if seconds is not None and attempts > 1 else ""
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError) and not str(exc):  # fsspec's request timeout (Timeouts.request_s)
        message = f"{type(exc).__name__}: no answer in time"
    cause = StoreResponse(f"{detail + ': ' if detail else ''}{message}{tries}")
    return StorageError(op, path, cause, errno=failure.errno or _errno.EIO)


class StoreResponse(Exception):
    """What the store answered, as the cause of a StorageError (its message names the code and status)."""


def call(op: str, path: str, fn: Callable[[], T], policy: RetryPolicy, *, read: bool = False) -> T:
    """Run ``fn`` with retries on transient errors; return its result.

    Raises:
        FileNotFoundError when ``read`` and the object is missing; FileExistsError and failed conditions
        (HTTP 412) as raised by ``fn``;
        StorageError naming ``path``, the store's code and errno for a permanent error (at once) or for a
        transient one that outlived every attempt or the policy's deadline.
    """
    delays = policy.delays()
    start = policy.clock()
    attempt = 1
    while True:
        try:
            return fn()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            action = _decide(exc, read)
            if action == "raise":
                raise
            delay = next(delays, None) if action == "retry" else None
            elapsed = policy.clock() - start
            if delay is not None and elapsed + delay > policy.deadline_s:
                delay = None  # out of time: a store that fails slowly must not hold the run for attempts * timeout
            if delay is None:
                raise storage_error(op, path, exc, attempt, elapsed) from exc
            logger.warning("%s of %s failed (%s); retry %d of %d in %.2f s", op, path,
                           classify(exc).describe() or exc, attempt, policy.attempts - 1, delay)
            policy.sleep(delay)
            attempt += 1


def _decide(exc: BaseException, read: bool) -> str:
    if isinstance(exc, (StorageError, FileExistsError)) or is_precondition_failed(exc):
        return "raise"  # already typed, or a failed condition that the caller interprets
    if read and is_missing(exc):
        return "raise"
    return "retry" if classify(exc).transient else "fail"

