"""Shared fixtures: a fresh run directory, source checkpoints on disk, tree snapshots, and a replayable seed.

There is no ``tests/__init__.py``: test modules are imported by their file name, so every test file name must be
unique across ``tests/``. Helpers live here as fixtures, never as imports from this file.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import trainkeep as tk


@pytest.fixture
def run_dir(tmp_path: Path) -> str:
    """Return the path of a run directory that does not exist yet."""
    return str(tmp_path / "run")


@pytest.fixture
def seed() -> int:
    """Return the test's random seed: ``SEED=`` from the environment, else a fresh one; print it for replay."""
    value = int(os.environ["SEED"]) if os.environ.get("SEED") else random.SystemRandom().randrange(2**32)
    print(f"random seed: SEED={value} replays this test")
    return value


@pytest.fixture
def make_source(tmp_path: Path) -> Callable[..., tk.Checkpoint]:
    """Return a factory that writes ``{relative path: bytes}`` into a fresh local directory as a Checkpoint."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes] | None = None) -> tk.Checkpoint:
        root = tmp_path / f"src_{next(counter)}"
        root.mkdir()
        for rel, data in (files if files is not None else {"model.bin": b"weights"}).items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return tk.Checkpoint.from_directory(root)

    return make


@pytest.fixture
def snapshot() -> Callable[[str], dict[str, tuple]]:
    """Return a function that records every entry under a directory: files by content, inode and mtime.

    Two equal snapshots mean nothing under the directory was created, deleted, rewritten or replaced.
    """

    def take(root: str) -> dict[str, tuple]:
        entries: dict[str, tuple] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                entries[os.path.relpath(os.path.join(dirpath, name), root)] = ("dir",)
            for name in filenames:
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                with open(full, "rb") as f:
                    entries[os.path.relpath(full, root)] = ("file", f.read(), st.st_ino, st.st_mtime_ns)
        return entries

    return take


@pytest.fixture(scope="session")
def read_tree() -> Callable[[str], dict[str, bytes]]:
    """Return a function that reads every file under a local directory: {"/"-joined relative path: bytes}."""

    def read(root: str) -> dict[str, bytes]:
        out = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                full = os.path.join(dirpath, name)
                out[os.path.relpath(full, root).replace(os.sep, "/")] = Path(full).read_bytes()
        return out

    return read


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start a real moto S3 server on 127.0.0.1 (a free port) once per test process; yield its URL."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
