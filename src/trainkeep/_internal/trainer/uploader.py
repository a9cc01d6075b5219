"""The background side of ``checkpoint_upload_mode=ASYNC``: one uploader thread, a bounded number in flight,
and the inbox that lets it learn where a round's files go without the training thread waiting for the driver."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from trainkeep._internal.trainer.protocol import Dest
from trainkeep.errors import SessionError

logger = logging.getLogger(__name__)

DEFAULT_IN_FLIGHT = 2


class AsyncUploader:
    """Run ``upload(job)`` for each submitted job, in order, in one background thread.

    At most ``limit`` jobs are queued or running; ``submit`` blocks while that many are. The first failure is
    kept: ``on_failure`` is told at once (so the run can stop), every later job is skipped, and the failure is
    raised again by the next ``submit``, ``raise_failure`` or ``close`` — an upload error is never silent.
    """

    def __init__(self, upload: Callable[[Any], None], on_failure: Callable[[BaseException], None],
                 limit: int = DEFAULT_IN_FLIGHT) -> None:
        self._upload, self._on_failure = upload, on_failure
        self._slots = threading.Semaphore(limit)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trainkeep-uploader", daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> None:
        """Queue ``job``; wait first while ``limit`` jobs are in flight. Raises an earlier upload's error."""
        self._slots.acquire()
        if self._error is not None:
            self._slots.release()
        self.raise_failure()
        self._jobs.put(job)

    def raise_failure(self) -> None:
        """Raise the first upload error, if there was one."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every queued upload to finish; raise the first upload error, if any."""
        self._jobs.put(None)
        self._thread.join()
        self.raise_failure()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    self._upload(job)
            except BaseException as exc:  # kept and re-raised in the training thread; nothing is swallowed
                self._error = exc
                logger.debug("background upload failed: %r", exc)
                self._on_failure(exc)
            finally:
                self._slots.release()


class Inbox:
    """Receive every message of a worker's connection in one thread, and hand each to the thread that waits.

    A ``Dest`` goes to whoever waits for its round (the uploader thread for an ASYNC report, the training thread
    for a SYNC one), so an ASYNC ``report()`` announces its round and returns without a round trip to the
    driver; any other message is the reply the training thread waits for (the driver never sends a message
    nobody waits for, see protocol.py). Started by the first ASYNC report with files; before that the training
    thread receives directly.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cond = threading.Condition()
        self._dests: dict[int, Any] = {}
        self._replies: list[Any] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="trainkeep-inbox", daemon=True)
        self._thread.start()

    def dest(self, k: int) -> Any:
        """Wait for and return the ``Dest`` of round ``k``. Raises SessionError once the driver is gone."""
        with self._cond:
            while k not in self._dests:
                if self._closed:
                    raise _driver_gone()
                self._cond.wait()
            return self._dests.pop(k)

    def reply(self) -> Any:
        """Wait for and return the next message that is not a ``Dest``. Raises SessionError once the driver is gone."""
        with self._cond:
            while not self._replies:
                if self._closed:
                    raise _driver_gone()
                self._cond.wait()
            return self._replies.pop(0)

    def _run(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            with self._cond:
                if isinstance(message, Dest):
                    self._dests[message.round] = message
                else:
                    self._replies.append(message)
                self._cond.notify_all()


def _driver_gone() -> SessionError:
    return SessionError("the driver of this run is gone; stopping this worker")
