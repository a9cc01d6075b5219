"""The worker-group interface: what the controller needs from the workers of one attempt, and nothing more.

The controller (``trainer/controller.py``) drives an attempt through this surface only; an executor is a
class that implements it. The surface is small on purpose: the controller speaks the round protocol
(``trainer/protocol.py``) with each rank as picklable messages, and it needs to learn the moment a rank says
something or dies. That is all: how the workers were placed, started, or connected is the executor's
business, so a new executor touches no protocol code, and the protocol can be tested over a fake group.

The rules every implementation keeps:

* ranks are ``0 .. world_size - 1``; ``send(rank, message)`` delivers in order, and sending to a rank that is
  already gone is a no-op (its death is reported by ``wait``);
* ``wait(timeout)`` blocks until at least one event or the timeout, and returns the events in order;
  a rank's messages always come before its :class:`Exited`;
* a death is an event, never an exception: ``Exited(rank, returncode)``, with a negative returncode for a
  signal and None when the executor cannot tell how the worker ended. Exactly one ``Exited`` per rank;
* ``kill()`` is idempotent and returns only once no worker can still write to storage.

How the next executors plug in:

* **Ray actors** (``backends/ray.py``): one actor per rank in a placement group from ``ScalingConfig``; each runs
  ``trainer.worker.serve`` on a TCP connection back to the driver, so ``wait`` multiplexes sockets as the
  local group does, and also asks Ray about actors whose node died (``Exited(rank, None)``); ``kill`` is
  ``ray.kill`` per actor and the release of the placement group.
* **A launcher-started group** (torchrun, srun: the processes are not started by us): ``start`` does not spawn
  anything; it listens on an address given to the launched processes (e.g. through ``MASTER_ADDR`` or a
  file) and maps each incoming connection to its rank (``RANK``). ``wait`` multiplexes those sockets; the end
  of a rank's connection (or a missed heartbeat) is its ``Exited(rank, None)``; ``kill`` closes the
  connections and asks the launcher to stop the job (the launcher owns the processes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple


class Message(NamedTuple):
    """A message from worker ``rank`` (one of the ``protocol`` classes)."""

    rank: int
    body: Any


class Exited(NamedTuple):
    """Worker ``rank`` ended: ``returncode`` 0 or an exit code, negative for a signal, None when unknown."""

    rank: int
    returncode: int | None


Event = Message | Exited


class WorkerGroup(ABC):
    """The workers of one attempt, as the controller sees them (see the module docstring for the rules)."""

    @abstractmethod
    def start(self, envs: list[dict[str, str]]) -> None:
        """Start (or attach to) ``len(envs)`` workers; rank r gets ``envs[r]`` added to its environment.

        Raises:
            OSError when a worker cannot be started (the ones already started are killed).
        """

    @property
    @abstractmethod
    def world_size(self) -> int:
        """The number of ranks started."""

    @abstractmethod
    def send(self, rank: int, message: Any) -> None:
        """Send ``message`` to worker ``rank``; a worker that is already gone is skipped."""

    @abstractmethod
    def wait(self, timeout: float | None) -> list[Event]:
        """Block until a worker sends something or ends, or ``timeout`` seconds pass; return what happened."""

    @abstractmethod
    def describe(self, rank: int) -> str:
        """Return how to find worker ``rank`` in logs and process tables, e.g. ``pid 1234``."""

    @abstractmethod
    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every worker to end on its own, then kill the rest."""

    @abstractmethod
    def kill(self) -> None:
        """Stop every worker now and release the group's resources; a no-op for workers already gone."""
