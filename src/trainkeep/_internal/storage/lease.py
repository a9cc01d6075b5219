"""The single-writer lock on stores without flock: a lease object renewed by a heartbeat.

The lease is one small JSON object (holder pid, host, token, heartbeat time, ttl). Taking it:

1. create the object only if absent (S3: ``If-None-Match: *``);
2. if it exists, read it with its version (S3: ETag). A live holder -> RunLockedError naming it. A stale one
   (its heartbeat is older than its ttl, or it is a dead process on this host) -> replace the object only if
   it is still that version (S3: ``If-Match``), so of two writers racing to take over exactly one wins.

The holder renews the heartbeat every ``ttl_s / 4`` with the same compare-and-swap. If a renewal finds the
object changed, another writer took the lease over: the lock is marked lost and the storage refuses every
later write under the run (fencing on our side). Likewise, if no renewal succeeded for ``0.75 * ttl_s``, the
holder stops writing before anyone may take over.

Limits: on S3 (and any store with conditional writes) acquisition and takeover are exact. On stores without
them (``memory://`` is exact within its one process; others) two writers on two hosts that start within the
same instant can both believe they won. Staleness across hosts compares wall clocks: their skew must be
well under ``ttl_s``. A write already in flight when the lease is lost can still land.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Protocol

from trainkeep._internal.storage.base import new_hasher
from trainkeep._internal.storage.locking import RunLock, holder_record, parse_holder, pid_alive
from trainkeep._internal.storage.s3 import ConditionFailed
from trainkeep.errors import RunLockedError, StorageError

logger = logging.getLogger(__name__)

_LIVE_TOKENS: set[str] = set()
_GUARD = threading.Lock()


class Conditional(Protocol):
    """Versioned reads and compare-and-swap writes of one object."""

    exact: bool

    def create(self, path: str, data: bytes) -> str: ...
    def read(self, path: str) -> tuple[bytes, str]: ...
    def replace(self, path: str, data: bytes, version: str) -> str: ...
    def delete(self, path: str, version: str) -> None: ...


class EmulatedConditional:
    """Compare-and-swap emulated by read-compare-write under a process-wide mutex.

    Exact between threads of one process (so for ``memory://``); across processes a window remains between
    the read and the write.
    """

    exact = False
    _mutex = threading.Lock()

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def create(self, path: str, data: bytes) -> str:
        with self._mutex:
            if self.storage.exists(path):
                raise FileExistsError(17, "object exists", path)
            self.storage.put_object(path, data)
            return _version(data)

    def read(self, path: str) -> tuple[bytes, str]:
        data = self.storage.read_bytes(path)
        return data, _version(data)

    def replace(self, path: str, data: bytes, version: str) -> str:
        with self._mutex:
            if _version(self.storage.read_bytes(path)) != version:
                raise ConditionFailed(path)
            self.storage.put_object(path, data)
            return _version(data)

    def delete(self, path: str, version: str) -> None:
        with self._mutex:
            try:
                current = self.storage.read_bytes(path)
            except FileNotFoundError:
                return
            if _version(current) != version:
                raise ConditionFailed(path)
            self.storage.remove_object(path)


def _version(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return str(hasher.hexdigest())


class LeaseLock(RunLock):
    """A lease with a heartbeat; see the module docstring for the protocol and its limits.

    Raises (from the constructor):
        RunLockedError naming the live holder; StorageError when the store fails.
    """

    ttl_s = 60.0

    def __init__(self, ops: Conditional, path: str) -> None:
        self._ops, self._path = ops, path
        self.run_path = os.path.dirname(os.path.dirname(path))
        self.holder = holder_record()
        self.holder["ttl_s"] = self.ttl_s
        self.lost: RunLockedError | None = None
        with _GUARD:  # live before the record exists: a thread of this process must not find it stale
            _LIVE_TOKENS.add(self.holder["token"])
        try:
            self._version = self._acquire()
        except BaseException:
            with _GUARD:
                _LIVE_TOKENS.discard(self.holder["token"])
            raise
        self._renewed = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trainkeep-lease", daemon=True)
        self._thread.start()

    def _record(self) -> bytes:
        self.holder["heartbeat"] = time.time()
        return json.dumps(self.holder).encode()

    def _acquire(self) -> str:
        current: dict[str, Any] = {}
        for _ in range(10):
            try:
                return self._ops.create(self._path, self._record())
            except FileExistsError:
                pass
            try:
                raw, version = self._ops.read(self._path)
            except FileNotFoundError:
                continue  # released between our create and our read: try again
            current = parse_holder(raw)
            if current.get("token") == self.holder["token"]:
                return version  # our create landed, its response was lost, and the retry found it
            reason = stale_reason(current)
            if reason is None:
                raise RunLockedError(self.run_path, current)
            logger.warning("taking over the lock of run %s: %s", self.run_path, reason)
            try:
                return self._ops.replace(self._path, self._record(), version)
            except (ConditionFailed, FileNotFoundError):
                continue  # someone else changed it first: look again
        raise RunLockedError(self.run_path, current)

    @property
    def released(self) -> bool:
        return self._stop.is_set()

    def check(self) -> None:
        """Raise RunLockedError when this holder may no longer write (lease lost, or not renewed in time)."""
        if self._stop.is_set():
            return
        if self.lost is not None:
            raise self.lost
        silent = time.monotonic() - self._renewed
        if silent > 0.75 * self.ttl_s:
            raise RunLockedError(self.run_path, {**self.holder, "note": f"lease not renewed for {silent:.0f} s"})

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self._version = self._ops.replace(self._path, self._record(), self._version)
                self._renewed = time.monotonic()
            except (ConditionFailed, FileNotFoundError):
                self._on_lost()
                return
            except Exception as exc:  # transient: keep trying; check() stops writes if it lasts
                logger.warning("could not renew the lock of run %s (%s)", self.run_path, exc)

    def _on_lost(self) -> None:
        try:
            holder = parse_holder(self._ops.read(self._path)[0])
        except Exception:
            holder = {}
        self.lost = RunLockedError(self.run_path, holder)
        logger.error("lost the lock of run %s to %s: this writer stops writing to it", self.run_path,
                     holder.get("pid", "another writer"))

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        if self._stop.is_set():
            return
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        with _GUARD:
            _LIVE_TOKENS.discard(self.holder["token"])
        if self.lost is not None:
            return
        try:
            self._ops.delete(self._path, self._version)
        except ConditionFailed:
            pass  # no longer ours: leave it to its holder
        except (OSError, StorageError) as exc:
            logger.warning("could not delete the lock of run %s (%s); it expires after %.0f s",
                           self.run_path, exc, self.ttl_s)


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Return why lock record ``holder`` is stale (may be taken over), or None when its holder is live."""
    if not holder.get("token"):
        return "the lock record is unreadable"
    now = time.time() if now is None else now
    beat = holder.get("heartbeat")
    recorded = holder.get("ttl_s")
    ttl = float(recorded) if isinstance(recorded, (int, float)) else LeaseLock.ttl_s
    if not isinstance(beat, (int, float)) or now - beat > ttl:
        return f"its holder (pid {holder.get('pid')} on {holder.get('host')}) has not renewed it for {ttl:.0f} s"
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if pid == os.getpid():
            with _GUARD:
                live = holder.get("token") in _LIVE_TOKENS
            return None if live else "it was left by a manager of this process that is gone"
        if not isinstance(pid, int) or not pid_alive(pid):
            return f"its holder, pid {pid} on this host, is dead"
    return None
