"""LaunchedWorkerGroup in one process: who may join, what a missing or departed rank becomes, where it listens."""

from __future__ import annotations

import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection

import pytest
from launcher_helpers import listeners

import trainkeep as tk
from trainkeep._internal.trainer.backends.launched import Hello, LaunchedWorkerGroup, Refused, connect
from trainkeep._internal.trainer.group import Exited, Message

KEY = b"k" * 32


def _hello(rank: int, world_size: int = 2) -> Hello:
    return Hello(rank, world_size, "host", 1000 + rank, None, None, None)


def _join(group: LaunchedWorkerGroup, hellos: list[Hello], key: bytes = KEY) -> list[Connection]:
    conns: list[Connection] = []
    for hello in hellos:
        conns.append(connect(group.address, key, hello, 5))
    return conns


def _started(group: LaunchedWorkerGroup, world_size: int) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            group.start([{}] * world_size)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    return thread, errors


def test_listens_on_the_given_loopback_address_only_and_stops_once_all_joined() -> None:
    group = LaunchedWorkerGroup(("127.0.0.1", 0), KEY, 5)
    port = group.address[1]
    try:
        assert listeners(port) == ["127.0.0.1"]
        thread, errors = _started(group, 2)
        conns = _join(group, [_hello(0), _hello(1)])
        thread.join()
        assert not errors and sorted(group.hellos) == [0, 1]
        assert listeners(port) == []  # nobody else may join this attempt
        # messages in order, then the end of a connection as Exited(rank, None)
        conns[1].send("a")
        conns[1].send("b")
        conns[1].close()
        events = []
        while len(events) < 3:
            events += group.wait(5)
        assert events == [Message(1, "a"), Message(1, "b"), Exited(1, None)]
        group.send(0, "hi")
        assert conns[0].recv() == "hi"
        group.send(1, "gone")  # a rank that is gone is skipped
    finally:
        group.kill()


def test_a_wrong_key_is_turned_away_and_the_ranks_still_join() -> None:
    group = LaunchedWorkerGroup(("127.0.0.1", 0), KEY, 5)
    try:
        thread, errors = _started(group, 1)
        with pytest.raises(AuthenticationError):
            connect(group.address, b"x" * 32, _hello(0, 1), 5)
        _join(group, [_hello(0, 1)])
        thread.join()
        assert not errors and list(group.hellos) == [0]
    finally:
        group.kill()


def test_a_rank_that_never_joins_is_named_after_the_timeout() -> None:
    group = LaunchedWorkerGroup(("127.0.0.1", 0), KEY, 0.5)
    thread, errors = _started(group, 3)
    conns = _join(group, [_hello(0, 3), _hello(2, 3)])
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], tk.ReportTimeoutError)
    assert "rank(s) [1] of 3 did not join" in str(errors[0]) and "joined: [0, 2]" in str(errors[0])
    for conn in conns:  # the ranks that joined are told why
        answer = conn.recv()
        assert isinstance(answer, Refused) and "rank(s) [1] of 3" in answer.reason


@pytest.mark.parametrize(("hellos", "message"), [
    ([_hello(0, 2), _hello(1, 3)], "rank 1 (pid 1001 on host) has world size 3, rank 0 has 2"),
    ([_hello(0, 2), _hello(0, 2)], "two processes claim rank 0"),
])
def test_inconsistent_ranks_fail_the_join_with_a_config_error(hellos: list[Hello], message: str) -> None:
    group = LaunchedWorkerGroup(("127.0.0.1", 0), KEY, 5)
    thread, errors = _started(group, 2)
    conns = _join(group, hellos)
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], tk.ConfigError) and message in str(errors[0])
    assert all(isinstance(conn.recv(), Refused) for conn in conns)


def test_a_taken_port_is_an_os_error_that_says_what_to_set() -> None:
    group = LaunchedWorkerGroup(("127.0.0.1", 0), KEY, 5)
    try:
        with pytest.raises(OSError, match="TRAINKEEP_PORT"):
            LaunchedWorkerGroup(group.address, KEY, 5)
    finally:
        group.kill()
