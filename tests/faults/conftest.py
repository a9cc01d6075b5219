"""Fixtures of the fault tests: scratch directories on tmpfs, the storages under test, a child-process runner.

The S3 server is the shared one (``moto_endpoint`` in tests/conftest.py): a moto server on 127.0.0.1 started
once per test process. The children that crash against it are forked from this process; they share one
botocore session made here, so that a child's S3 client costs milliseconds instead of half a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from trainkeep._internal.storage import FsspecStorage, RetryPolicy, Storage
from trainkeep.testing import scratch_dir

_spec = importlib.util.spec_from_file_location(
    "tk_faults_conformance_conftest", Path(__file__).resolve().parent.parent / "storage" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_conformance = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_conformance)
FAST_RETRY = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)


@pytest.fixture
def scratch() -> Iterator[str]:
    """Yield a fresh local directory, on tmpfs where there is one (fsync costs nothing there)."""
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local_root(scratch: str) -> str:
    """Return a directory under which the local-disk checks create their runs."""
    root = os.path.join(scratch, "runs")
    os.makedirs(root)
    return root


@pytest.fixture
def memory_storage() -> Iterator[tuple[Callable[[], Storage], str]]:
    """Yield (a factory of FsspecStorage over memory://, a fresh root on it); the root is removed after."""
    fs = fsspec.filesystem("memory")
    root = f"memory://tk-faults-{uuid.uuid4().hex[:10]}"
    yield (lambda: FsspecStorage(fs, FAST_RETRY)), root
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def s3_storage(moto_endpoint: str) -> Iterator[tuple[Callable[[], Storage], str]]:
    """Yield (a factory of FsspecStorage over the moto S3 server, the root of a fresh bucket)."""
    import aiobotocore.session

    session = aiobotocore.session.AioSession()

    def make_fs() -> fsspec.AbstractFileSystem:
        return _conformance.s3_filesystem(moto_endpoint, session=session)

    bucket = f"tk-faults-{uuid.uuid4().hex[:10]}"
    make_fs().call_s3("create_bucket", Bucket=bucket)
    yield (lambda: FsspecStorage(make_fs(), FAST_RETRY)), f"s3://{bucket}/runs"
    fs = make_fs()
    fs.rm(bucket, recursive=True)


def run_in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child; return its JSON-able result, or raise AssertionError with its traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            payload = {"result": fn()}
        except BaseException:
            payload = {"error": traceback.format_exc()}
        with os.fdopen(write_end, "w") as out:
            json.dump(payload, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    payload = json.loads(text) if text else {"error": "the child died without a word"}
    if "error" in payload:
        raise AssertionError(f"the child failed:\n{payload['error']}")
    return payload["result"]


@pytest.fixture
def in_child() -> Callable[..., Any]:
    """Return :func:`run_in_child`."""
    return run_in_child
