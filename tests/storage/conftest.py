"""The storage conformance suite's fixtures: one ``backend`` fixture, parametrised over every storage we ship.

* ``local``: the local disk (LocalStorage), under pytest's tmp_path.
* ``memory``: fsspec's in-memory filesystem (FsspecStorage), under a unique root removed after the test.
* ``s3``: a real moto S3 server on 127.0.0.1 (a free port), started once per test process by
  ``moto_endpoint`` (tests/conftest.py), with a fresh bucket per test; s3fs is used with its listings cache on, as users run it.

Every test in this directory that takes ``backend`` runs three times, once per store. Tests that need a second
process to see the store (SIGKILL tests) skip ``memory``, which lives inside one process.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest

import trainkeep as tk
from trainkeep._internal.storage import FsspecStorage, RetryPolicy, Storage, resolve

HERE = Path(__file__).resolve().parent
FAST_RETRY = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_clients(moto_endpoint: str) -> tuple[fsspec.AbstractFileSystem, fsspec.AbstractFileSystem]:
    """Return two independent s3fs filesystems for the moto server (made once: a client takes ~0.5 s)."""
    return s3_filesystem(moto_endpoint), s3_filesystem(moto_endpoint)


def s3_filesystem(endpoint: str, **extra: Any) -> fsspec.AbstractFileSystem:
    """Return a fresh s3fs filesystem for the moto server at ``endpoint`` (listings cache on, as by default)."""
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, anon=False,
                             client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True, **extra)


@dataclass
class Backend:
    """One store under test: a root to put runs under, and the filesystem that reaches it."""

    name: str
    root: str  # a URL or local path under which this test may create anything
    fs: fsspec.AbstractFileSystem
    env: dict[str, str] = field(default_factory=dict)  # what a child process needs to reach the store
    other_fs: fsspec.AbstractFileSystem | None = None  # a second client of the same store, with its own caches

    @property
    def shared_across_processes(self) -> bool:
        return self.name != "memory"

    def url(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def storage(self, retry: RetryPolicy | None = None) -> tuple[Storage, str]:
        """Return a fresh Storage for this backend and the root path on it."""
        storage, path = resolve(self.root, self.fs)
        if isinstance(storage, FsspecStorage):
            storage = FsspecStorage(self.fs, retry or FAST_RETRY)
        return storage, path

    def manager(self, run: str = "run", config: tk.CheckpointConfig | None = None,
                storage: Storage | None = None) -> tk.CheckpointManager:
        if storage is None and self.name != "local":
            storage = self.storage()[0]
        return tk.CheckpointManager(self.url(run), config, storage_filesystem=self.fs, storage=storage)

    def result(self, run: str = "run") -> tk.Result:
        return tk.Result.from_path(self.url(run), storage_filesystem=self.fs)

    def run_child(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run storage_child.py against this store in a new process; return it finished."""
        return subprocess.run([sys.executable, str(HERE / "storage_child.py"), *args], env=self._child_env(),
                              capture_output=True, text=True, timeout=timeout)

    def start_child(self, *args: str) -> subprocess.Popen:
        """Start storage_child.py against this store; the caller reads its "ready" line."""
        return subprocess.Popen([sys.executable, str(HERE / "storage_child.py"), *args], env=self._child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "TK_BACKEND": self.name, "TK_ROOT": self.root}

    def fresh_fs(self) -> fsspec.AbstractFileSystem:
        """Return a second, independent filesystem object for the same store (its own caches)."""
        return self.other_fs or self.fs


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Yield each backend in turn, with a root of its own that is cleaned up after the test."""
    if request.param == "local":
        yield Backend("local", str(tmp_path / "store"), fsspec.filesystem("file"))
    elif request.param == "memory":
        root = f"memory://tk-{uuid.uuid4().hex[:12]}"
        fs = fsspec.filesystem("memory")
        yield Backend("memory", root, fs)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        fs, other = request.getfixturevalue("s3_clients")
        bucket = f"tk-{uuid.uuid4().hex[:12]}"
        fs.call_s3("create_bucket", Bucket=bucket)
        yield Backend("s3", f"s3://{bucket}", fs, {"TK_S3_ENDPOINT": endpoint}, other)
        fs.rm(bucket, recursive=True)
        fs.invalidate_cache()


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[Any]:
    """Yield a FaultProxy (fault_proxy.py) in front of the moto server, on 127.0.0.1."""
    spec = importlib.util.spec_from_file_location("tk_fault_proxy", HERE / "fault_proxy.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    proxy = module.FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def faulty_s3(fault_proxy: Any, s3_clients: Any) -> Iterator[tuple[Any, Backend]]:
    """Yield (proxy, backend) where the backend reaches a fresh bucket through the proxy, with s3fs's and
    botocore's own retries off, so that every retry seen is trainkeep's."""
    bucket = f"tk-{uuid.uuid4().hex[:12]}"
    s3_clients[0].call_s3("create_bucket", Bucket=bucket)
    fs = s3_filesystem(fault_proxy.url, config_kwargs={"retries": {"total_max_attempts": 1, "mode": "standard"}})
    fs.retries = 1
    yield fault_proxy, Backend("s3", f"s3://{bucket}", fs, {"TK_S3_ENDPOINT": fault_proxy.url})
    s3_clients[0].rm(bucket, recursive=True)


@pytest.fixture
def make_files(tmp_path: Path):
    """Return a factory writing ``{relative path: bytes}`` into a fresh local directory; returns its path."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes]) -> str:
        root = tmp_path / f"files_{next(counter)}"
        for rel, data in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        root.mkdir(exist_ok=True)
        return str(root)

    return make

