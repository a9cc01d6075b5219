"""The background uploader of ``checkpoint_upload_mode=ASYNC``: one thread, a bounded number in flight."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

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
