"""A store that does not answer fails the run in bounded time, with a StorageError: real sockets on 127.0.0.1.

* a closed port and an unresolvable host fail at start within 10 s;
* a server that accepts connections and never answers fails at start within 60 s with the default timeouts,
  and within the configured ones when they are set (``TRAINKEEP_STORAGE_*``);
* a server that stops reading in the middle of an upload fails the round within the configured request
  timeout and deadline, and leaves no checkpoint.

The S3 filesystem is built by trainkeep from an ``s3://`` URL (fsspec's configuration names the endpoint), so
these tests check the client settings trainkeep applies, not settings a test chose.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import fsspec
import pytest

import trainkeep as tk
from trainkeep._internal.storage import FsspecStorage, Timeouts
from trainkeep.errors import ConfigError, StorageError

pytest.importorskip("s3fs")

ENV_VARS = ("CONNECT_S", "READ_S", "REQUEST_S", "DEADLINE_S")


@pytest.fixture(autouse=True)
def default_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(f"TRAINKEEP_STORAGE_{name}", raising=False)


def point_s3_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Make ``s3://`` URLs reach ``endpoint`` (as a user configures fsspec)."""
    monkeypatch.setitem(fsspec.config.conf, "s3", {
        "endpoint_url": endpoint, "key": "testing", "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"}})


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Yield the URL of a server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    for conn in held:
        conn.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on return: connections to it are refused


def time_to_failure(url: str) -> tuple[float, StorageError]:
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        tk.CheckpointManager(url)
    elapsed = time.monotonic() - start
    print(f"failed after {elapsed:.2f} s: {info.value}")
    return elapsed, info.value


def test_a_refused_endpoint_fails_at_start_within_10_s(monkeypatch):
    point_s3_at(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    elapsed, error = time_to_failure("s3://bucket/run")
    assert elapsed < 10
    assert "bucket/run" in str(error) and "Could not connect" in str(error)


def test_an_unresolvable_endpoint_fails_at_start_within_10_s(monkeypatch):
    point_s3_at(monkeypatch, "http://trainkeep-test.invalid:9000")  # .invalid never resolves (RFC 6761)
    elapsed, error = time_to_failure("s3://bucket/run")
    assert elapsed < 10
    assert "trainkeep-test.invalid" in str(error)


def test_a_silent_server_fails_at_start_within_60_s_by_default(monkeypatch, silent_server):
    point_s3_at(monkeypatch, silent_server)
    elapsed, error = time_to_failure("s3://bucket/run")
    defaults = Timeouts()
    assert elapsed < 60
    assert elapsed < defaults.deadline_s + defaults.read_s + 5  # no retry starts after the deadline
    assert "Read timeout" in str(error)


def test_a_silent_server_fails_within_the_configured_timeouts(monkeypatch, silent_server):
    point_s3_at(monkeypatch, silent_server)
    monkeypatch.setenv("TRAINKEEP_STORAGE_READ_S", "1")
    monkeypatch.setenv("TRAINKEEP_STORAGE_DEADLINE_S", "2")
    elapsed, error = time_to_failure("s3://bucket/run")
    assert 1 <= elapsed < 2 + 1 + 5  # at least one read timeout; at most the deadline, one attempt, start-up
    assert "Read timeout" in str(error)


def test_a_stall_in_the_middle_of_an_upload_fails_the_round_within_the_configured_timeout(
        faulty_s3, make_files):
    proxy, backend = faulty_s3
    timeouts = Timeouts(request_s=2, deadline_s=3)
    big = tk.Checkpoint.from_directory(make_files({"model.bin": b"w" * (17 * 1024 * 1024 + 7)}))
    storage = FsspecStorage(backend.fs, timeouts=timeouts)
    with backend.manager(storage=storage) as mgr:
        proxy.fail("PUT", "stall", times=1000, match="partNumber=1", stall_after=1024 * 1024)
        start = time.monotonic()
        with pytest.raises(StorageError) as info:
            mgr.report({"step": 0}, checkpoint=big)
        elapsed = time.monotonic() - start
        print(f"stalled upload failed after {elapsed:.2f} s: {info.value}")
        proxy.faults.clear()
    assert elapsed < timeouts.deadline_s + timeouts.request_s + 5
    assert proxy.count("PUT", "stall") >= 1
    assert backend.result().checkpoint is None  # the failed round left nothing visible


@pytest.mark.parametrize("name, value", [("READ_S", "0"), ("DEADLINE_S", "soon"), ("CONNECT_S", "inf"),
                                         ("REQUEST_S", "-1")])
def test_a_bad_timeout_variable_is_a_config_error_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(f"TRAINKEEP_STORAGE_{name}", value)
    with pytest.raises(ConfigError, match=f"TRAINKEEP_STORAGE_{name} must be .* got '{value}'"):
        tk.CheckpointManager(f"memory://tk-{uuid.uuid4().hex[:8]}/run")


def test_timeouts_reject_bad_values_naming_the_field():
    with pytest.raises(ConfigError, match="Timeouts.read_s must be a finite number of seconds > 0, got 0"):
        Timeouts(read_s=0)


def test_fsspec_configuration_wins_over_our_client_defaults(monkeypatch):
    from trainkeep._internal.storage.resolution import s3_options

    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"read_timeout": 99}})
    options = s3_options(Timeouts(connect_s=3))["config_kwargs"]
    assert options["read_timeout"] == 99 and options["connect_timeout"] == 3
    assert options["retries"] == {"mode": "standard", "total_max_attempts": 1}


def test_a_worker_gets_the_same_client_settings_as_the_driver(monkeypatch, moto_endpoint):
    """A filesystem pickled to a worker process loses its attributes; storage_for sets them again."""
    import pickle

    from trainkeep._internal.storage import resolve, storage_for

    point_s3_at(monkeypatch, moto_endpoint)
    driver, _ = resolve(f"s3://tk-{uuid.uuid4().hex[:8]}/run")
    assert driver.fs.retries == 1 and driver.fs.config_kwargs["read_timeout"] == Timeouts().read_s
    type(driver.fs).clear_instance_cache()  # as in a fresh worker process
    copy = pickle.loads(pickle.dumps(driver.fs))
    assert copy is not driver.fs and copy.retries == type(copy).retries  # s3fs's default again
    worker = storage_for(copy)
    assert worker.fs.retries == 1 and worker.fs.config_kwargs == driver.fs.config_kwargs
