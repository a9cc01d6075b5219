"""Remote errors on S3, served for real by a proxy in front of moto: transient ones (503 SlowDown, reset
connections) are retried with backoff and the report succeeds; permanent ones (403, NoSuchBucket) fail at once
with a StorageError naming the path and the store's code; and a failed report leaves nothing visible."""

from __future__ import annotations

import pytest

import trainkeep as tk
from trainkeep._internal.storage import FsspecStorage, RetryPolicy
from trainkeep.errors import StorageError

POLICY = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)


BIG = 17 * 1024 * 1024 + 7  # more than one part: a multipart upload


@pytest.fixture
def source(make_files):
    return tk.Checkpoint.from_directory(make_files({"model.bin": b"w" * BIG, "opt.bin": b"o" * 10}))


@pytest.fixture
def small_source(make_files):
    return tk.Checkpoint.from_directory(make_files({"model.bin": b"w" * 1000}))


def manager(backend) -> tk.CheckpointManager:
    return backend.manager(storage=FsspecStorage(backend.fs, POLICY))


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_transient_errors_are_retried_and_the_report_succeeds(faulty_s3, source, kind, caplog):
    proxy, backend = faulty_s3
    with manager(backend) as mgr:
        proxy.fail("PUT", kind, times=2)
        proxy.fail("PUT", kind, times=2, match="partNumber=2")  # the second part of model.bin
        proxy.fail("POST", kind, times=1, match="uploadId")  # completing the multipart upload
        proxy.fail("GET", kind, times=1)
        proxy.fail("HEAD", kind, times=1)
        mgr.report({"step": 0}, checkpoint=source)
        mgr.report({"step": 1}, checkpoint=source)
    assert proxy.count("PUT", kind) == 4 and proxy.count("POST", kind) == 1
    assert any("retry 1 of 3" in r.getMessage() for r in caplog.records)
    result = backend.result()
    assert [row["round"] for row in result.history] == [0, 1]
    with result.checkpoint.as_directory() as local:
        assert open(f"{local}/model.bin", "rb").read() == b"w" * BIG


def test_a_persistent_transient_error_fails_after_every_attempt_naming_path_and_code(faulty_s3, small_source):
    proxy, backend = faulty_s3
    source = small_source
    with manager(backend) as mgr:
        mgr.report({"step": 0}, checkpoint=source)
        proxy.fail("PUT", "503", times=1000)
        with pytest.raises(StorageError) as info:
            mgr.report({"step": 1}, checkpoint=source)
        proxy.faults.clear()
    message = str(info.value)
    assert "checkpoint_000001" in message and "SlowDown" in message and "HTTP 503" in message
    assert "after 4 attempts" in message
    assert proxy.count("PUT", "503") == POLICY.attempts  # the report's first PUT, tried 4 times, then no more
    assert [c.path.rsplit("/", 1)[-1] for c, _ in backend.result().best_checkpoints] == ["checkpoint_000000"]


def test_access_denied_fails_at_once_naming_path_and_code(faulty_s3, small_source):
    proxy, backend = faulty_s3
    source = small_source
    with manager(backend) as mgr:
        proxy.fail("PUT", "403", code="AccessDenied", times=1000)
        with pytest.raises(StorageError) as info:
            mgr.report({"step": 0}, checkpoint=source)
        proxy.faults.clear()
    assert "AccessDenied" in str(info.value) and "HTTP 403" in str(info.value)
    assert proxy.count("PUT", "403") == 1  # no retry of a permanent error
    assert backend.result().checkpoint is None


def test_a_missing_bucket_fails_at_once_naming_path_and_code(faulty_s3):
    proxy, backend = faulty_s3
    with pytest.raises(StorageError) as info:
        tk.CheckpointManager("s3://no-such-bucket-tk/run", storage_filesystem=backend.fs,
                             storage=FsspecStorage(backend.fs, POLICY))
    message = str(info.value)
    assert "no-such-bucket-tk/run" in message and "NoSuchBucket" in message and "HTTP 404" in message
    assert proxy.count("PUT") == 1
