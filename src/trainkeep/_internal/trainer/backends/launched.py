"""LaunchedWorkerGroup: the ranks of a script started by a launcher (torchrun, srun, mpirun), seen from rank 0.

An implementation of :class:`~trainkeep._internal.trainer.group.WorkerGroup` that starts nothing: the launcher owns the
processes. Rank 0 listens on the address every rank knows (``MASTER_ADDR``), every rank (rank 0 included)
connects to it and says who it is (:class:`Hello`), and from then on the controller speaks the usual round
protocol over those connections. The end of a rank's connection is its ``Exited(rank, None)``: rank 0 cannot
see the processes of other nodes, and a rank whose connection closed can no longer take part in a round.

Each connection starts with the mutual HMAC challenge of ``multiprocessing.connection`` under a key every rank
derives alike (see ``trainkeep.launch``), so a stray process, or a rank left over from an earlier attempt, is
turned away before anything is unpickled.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge, wait
from typing import Any, NamedTuple

from trainkeep._internal.trainer.group import Event, Exited, Message, WorkerGroup
from trainkeep.errors import ConfigError, ReportTimeoutError, WorkerStartError

logger = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT_S = 30.0  # a peer that connects and then says nothing is dropped after this long (one at a time)


class Hello(NamedTuple):
    """The first message of a rank on its connection: who it is, as its launcher told it."""

    rank: int
    world_size: int
    host: str
    pid: int
    local_rank: int | None  # None: its index among the ranks on the same host
    local_world_size: int | None  # None: count the ranks on the same host
    node_rank: int | None  # None: number the hosts in the order of their lowest rank


class Refused(NamedTuple):
    """Rank 0 turns a rank away (a bad Hello, or the run failed before it started); ``reason`` says why."""

    reason: str


class LaunchedWorkerGroup(WorkerGroup):
    """The connections of the ranks of a launched job, accepted on ``address`` (bound at construction).

    Args:
        address: (host, port) to listen on: ``MASTER_ADDR`` and the trainkeep port.
        authkey: the shared key of the connection handshake.
        join_timeout_s: how long ``start`` waits for every rank to connect.

    Raises:
        OSError naming the address when it cannot be bound (e.g. the port is taken).
    """

    def __init__(self, address: tuple[str, int], authkey: bytes, join_timeout_s: float) -> None:
        self._authkey, self._join_timeout_s = authkey, join_timeout_s
        self._conns: dict[int, Connection] = {}
        self._open: set[int] = set()
        self._broken: set[int] = set()  # ranks whose connection failed a send (wait() reads on to its end)
        self.hellos: dict[int, Hello] = {}
        self._world_size = 0
        try:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            self._listener: socket.socket | None = socket.socket(family, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted rank 0 rebinds
            self._listener.bind(address)
            self._listener.listen(128)
        except OSError as exc:
            raise WorkerStartError(exc.errno, f"trainkeep's rank 0 cannot listen on {address[0]}:{address[1]} ({exc.strerror}): "
                          "MASTER_ADDR must be an address of rank 0's own host, and the port free (TRAINKEEP_PORT "
                          "or trainkeep.init(port=...) picks another one that every rank can reach)") from exc
        self.address: tuple[str, int] = self._listener.getsockname()[:2]

    @property
    def world_size(self) -> int:
        return self._world_size

    def start(self, envs: list[dict[str, str]]) -> None:
        """Accept one connection from each of ``len(envs)`` ranks (``envs`` are not used: the launcher set them).

        Raises:
            ReportTimeoutError naming the ranks that did not connect within the join timeout; ConfigError
            when a rank's world size differs, or two connections claim the same rank. Either way every
            rank that did connect is sent a :class:`Refused` with the reason and its connection is closed.
        """
        self._world_size = len(envs)
        deadline = time.monotonic() + self._join_timeout_s
        try:
            while len(self.hellos) < self._world_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReportTimeoutError(self._missing_message())
                assert self._listener is not None
                ready, _, _ = select.select([self._listener], [], [], remaining)
                if ready:
                    self._accept_one()
        except BaseException as exc:
            self.refuse(str(exc))
            self.kill()
            raise
        self._close_listener()  # nobody else may join this attempt
        logger.debug("every rank of %d joined at %s:%d", self._world_size, *self.address)

    def _missing_message(self) -> str:
        missing = [r for r in range(self._world_size) if r not in self.hellos]
        return (f"rank(s) {missing} of {self._world_size} did not join the run at {self.address[0]}:"
                f"{self.address[1]} within {self._join_timeout_s:g} s (every rank must call trainkeep.init(); "
                f"joined: {sorted(self.hellos)}). RunConfig(report_timeout_s=...) sets this limit.")

    def _accept_one(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(_HANDSHAKE_TIMEOUT_S))
        conn = Connection(sock.detach())
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            hello = conn.recv()
        except Exception as exc:  # a stranger, a wrong key, or a peer that said nothing: not one of our ranks
            logger.warning("trainkeep's rank 0 turned away a connection that is not a rank of this run: %r", exc)
            conn.close()
            return
        _clear_timeout(conn)
        self._admit(conn, hello)

    def _admit(self, conn: Connection, hello: Any) -> None:
        if not isinstance(hello, Hello):
            conn.close()
            return
        problem = ""
        if hello.world_size != self._world_size:
            problem = (f"rank {hello.rank} (pid {hello.pid} on {hello.host}) has world size {hello.world_size}, "
                       f"rank 0 has {self._world_size}: every rank of a run needs the same WORLD_SIZE")
        elif hello.rank in self.hellos:
            first = self.hellos[hello.rank]
            problem = (f"two processes claim rank {hello.rank}: pid {first.pid} on {first.host} and pid "
                       f"{hello.pid} on {hello.host}; each rank of a run needs its own RANK")
        elif not 0 <= hello.rank < self._world_size:
            problem = f"rank {hello.rank} is outside 0 .. {self._world_size - 1}"
        if problem:
            with contextlib.suppress(OSError):
                conn.send(Refused(problem))
            conn.close()
            raise ConfigError(problem)
        self._conns[hello.rank] = conn
        self._open.add(hello.rank)
        self.hellos[hello.rank] = hello

    def refuse(self, reason: str) -> None:
        """Send :class:`Refused` with ``reason`` to every rank still connected (each raises it at its next call)."""
        for rank in sorted(self._open):
            self.send(rank, Refused(reason))

    def send(self, rank: int, message: Any) -> None:
        """Send ``message`` to rank ``rank``; a rank whose connection is closed is skipped."""
        if rank not in self._open or rank in self._broken:
            return
        try:
            self._conns[rank].send(message)
        except OSError:
            self._broken.add(rank)  # its end is reported by wait(), after what it sent before it

    def wait(self, timeout: float | None) -> list[Event]:
        """Block until a rank sends something or its connection ends, or ``timeout`` seconds pass."""
        events: list[Event] = []
        handles = {self._conns[rank]: rank for rank in self._open}
        if not handles:
            return []
        for ready in wait(list(handles), timeout):
            conn: Connection = ready  # type: ignore[assignment]
            rank = handles[conn]
            try:
                while conn.poll():
                    events.append(Message(rank, conn.recv()))
            except (EOFError, OSError):
                self._open.discard(rank)
                events.append(Exited(rank, None))
        return events

    def describe(self, rank: int) -> str:
        hello = self.hellos.get(rank)
        return f"pid {hello.pid} on host {hello.host}" if hello else "never joined"

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every rank to close its connection, then close the rest."""
        deadline = time.monotonic() + timeout_s
        while self._open and time.monotonic() < deadline:
            for event in self.wait(max(0.0, deadline - time.monotonic())):
                if isinstance(event, Message):
                    logger.debug("rank %d sent %r after it finished", event.rank, event.body)
        self.kill()

    def kill(self) -> None:
        """Close every connection and the listener (the launcher, not trainkeep, stops the processes)."""
        self._close_listener()
        for rank, conn in self._conns.items():
            self._open.discard(rank)
            with contextlib.suppress(OSError):
                conn.close()

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None


def connect(address: tuple[str, int], authkey: bytes, hello: Hello, timeout_s: float) -> Connection:
    """Connect to rank 0 at ``address`` (retrying until it listens), pass the handshake and send ``hello``.

    Raises:
        ReportTimeoutError naming the address when rank 0 does not accept within ``timeout_s``;
        AuthenticationError when rank 0 answers with another key (a different job on the same port).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            sock = socket.create_connection(address, timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError as exc:
            if time.monotonic() + delay >= deadline:
                raise ReportTimeoutError(
                    f"rank {hello.rank} could not reach rank 0 at {address[0]}:{address[1]} within {timeout_s:g} s "
                    f"({exc}): rank 0 listens there once it called trainkeep.init(); check MASTER_ADDR and "
                    "MASTER_PORT / TRAINKEEP_PORT") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Connection(sock.detach())
    answer_challenge(conn, authkey)
    deliver_challenge(conn, authkey)
    conn.send(hello)
    return conn


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


def _clear_timeout(conn: Connection) -> None:
    """Make receives on ``conn`` block without limit again (the handshake is over)."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.detach()
