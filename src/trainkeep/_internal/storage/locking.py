"""What every single-writer lock shares: the held-lock interface and the holder record it publishes.

The implementations live with their stores: ``FlockLock`` (``local.py``, the kernel's flock) and
``LeaseLock`` (``lease.py``, a lease object renewed by a heartbeat). A refused opener reads the holder record
to name who holds the run (pid, host, start), and to tell a dead holder on this host from a live one.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any


class RunLock(ABC):
    """A held single-writer lock; ``release()`` is idempotent."""

    holder: dict[str, Any]

    @abstractmethod
    def release(self) -> None: ...


def holder_record() -> dict[str, Any]:
    """Return who we are, for lock files and error messages."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": uuid.uuid4().hex,
    }


def parse_holder(raw: bytes) -> dict[str, Any]:
    """Return the lock holder record in ``raw`` ({} when it is not a JSON object)."""
    try:
        holder = json.loads(raw)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def pid_alive(pid: int) -> bool:
    """Return True when process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
