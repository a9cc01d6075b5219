"""LocalWorkerGroup: the worker processes of this machine, each with a duplex connection to the driver.

The first implementation of :class:`~trainkeep._internal.trainer.group.WorkerGroup`.

Workers are started with ``subprocess`` (fork + exec of a fresh interpreter: nothing of the driver's memory,
locks or threads is inherited) rather than ``multiprocessing``'s spawn, because spawn re-imports the user's
``__main__`` module in every worker: a Ray Train script without an ``if __name__ == "__main__"`` guard would
start workers recursively, and a script that imports heavy libraries at the top would pay for them twice.
The training function travels by cloudpickle instead, so closures and lambdas from ``__main__`` work.

Each worker is the leader of a new process group, so stopping it also stops what it started (data-loader
workers). A dead worker is noticed at once through a pidfd (Linux) or the end of its connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import trainkeep.errors
from trainkeep._internal.trainer.group import Event, Exited, Message, WorkerGroup

logger = logging.getLogger(__name__)

_BOOTSTRAP = "from trainkeep._internal.trainer.worker import main; main()"


# the directory that holds the trainkeep package, put first on the workers' PYTHONPATH
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(trainkeep.errors.__file__)))


class _Worker:
    def __init__(self, rank: int, proc: subprocess.Popen, conn: Connection, pidfd: int | None) -> None:
        self.rank, self.proc, self.conn, self.pidfd = rank, proc, conn, pidfd
        self.conn_open = True
        self.alive = True


class LocalWorkerGroup(WorkerGroup):
    """Worker processes on this machine, started by ``start`` with ``subprocess``; a death is seen via a pidfd."""

    def __init__(self) -> None:
        self._workers: list[_Worker] = []

    def start(self, envs: list[dict[str, str]]) -> None:
        """Start ``len(envs)`` worker processes; worker ``rank`` gets ``envs[rank]`` added to its environment.

        Raises:
            OSError when a process cannot be started (the ones already started are killed).
        """
        try:
            for rank, env in enumerate(envs):
                self._workers.append(_start(rank, env))
        except BaseException:
            self.kill()
            raise

    @property
    def world_size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers, by rank."""
        return [w.proc.pid for w in self._workers]

    def describe(self, rank: int) -> str:
        return f"pid {self._workers[rank].proc.pid}"

    def send(self, rank: int, message: Any) -> None:
        """Send ``message`` to worker ``rank``; a worker that is already gone is skipped."""
        worker = self._workers[rank]
        if not worker.conn_open:
            return
        try:
            worker.conn.send(message)
        except (BrokenPipeError, ConnectionResetError):
            worker.conn_open = False  # its exit is reported by wait()

    def wait(self, timeout: float | None) -> list[Event]:
        """Block until a worker sends something or exits, or ``timeout`` seconds pass; return what happened.

        Messages of a worker always come before its exit, so a worker that reports and then ends is seen in
        that order.
        """
        handles: dict[Any, tuple[_Worker, str]] = {}
        for w in self._workers:
            if w.conn_open:
                handles[w.conn] = (w, "conn")
            if w.alive and w.pidfd is not None:
                handles[w.pidfd] = (w, "pid")
        if not handles:
            return []
        events: list[Event] = []
        ready = wait(list(handles), timeout)
        for handle in ready:
            worker, kind = handles[handle]
            if kind == "conn":
                self._drain(worker, events)
        for handle in ready:
            worker, kind = handles[handle]
            if kind == "pid":
                self._reap(worker, events)
        return events

    def _drain(self, worker: _Worker, events: list[Event]) -> None:
        try:
            while worker.conn_open and worker.conn.poll():
                events.append(Message(worker.rank, worker.conn.recv()))
        except (EOFError, OSError):
            worker.conn_open = False
            if worker.pidfd is None:  # no pidfd on this platform: the end of the connection is the exit signal
                self._reap(worker, events)

    def _reap(self, worker: _Worker, events: list[Event]) -> None:
        if worker.conn_open:
            self._drain(worker, events)
        if not worker.alive:
            return
        try:
            returncode = worker.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _killpg(worker.proc)
            returncode = worker.proc.wait()
        worker.alive = False
        events.append(Exited(worker.rank, returncode))

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every worker to exit on its own, then kill the rest."""
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker rank %d (pid %d) did not exit within %g s after its training function "
                               "returned (a non-daemon thread?); killing it", worker.rank, worker.proc.pid, timeout_s)
        self.kill()

    def kill(self) -> None:
        """Kill every worker and its process group with SIGKILL, wait for them, and close the connections."""
        for worker in self._workers:
            if worker.proc.returncode is None:
                _killpg(worker.proc)
        for worker in self._workers:
            worker.proc.wait()
            worker.alive = False
            worker.conn_open = False
            with contextlib.suppress(OSError):
                worker.conn.close()
            if worker.pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(worker.pidfd)
                worker.pidfd = None


def _start(rank: int, extra_env: dict[str, str]) -> _Worker:
    parent_sock, child_sock = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra_env)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(child_sock.fileno()), str(os.getpid())],
            pass_fds=(child_sock.fileno(),), env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    except BaseException:
        parent_sock.close()
        raise
    finally:
        child_sock.close()
    conn = Connection(parent_sock.detach())
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)  # type: ignore[attr-defined]
    logger.debug("started worker rank %d as pid %d", rank, proc.pid)
    return _Worker(rank, proc, conn, pidfd)


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
