"""Which remote errors are retried, how often, and what the final error says (no store needed: the errors are
botocore's and the OS's own exception types)."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from trainkeep._internal.storage.retry import RetryPolicy, call, classify, is_missing
from trainkeep.errors import StorageError


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def as_s3fs_raises(error: BaseException, translated: OSError) -> OSError:
    """Return ``translated`` raised from ``error``, as s3fs does."""
    translated.__cause__ = error
    return translated


@pytest.mark.parametrize("exc", [
    client_error("SlowDown", 503), client_error("InternalError", 500), client_error("RequestTimeout", 400),
    as_s3fs_raises(client_error("ServiceUnavailable", 503), OSError(errno.EBUSY, "busy")),
    ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), ReadTimeoutError(endpoint_url="http://x"),
    ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("timed out"),
])
def test_transient_errors(exc):
    assert classify(exc).transient


@pytest.mark.parametrize("exc", [
    client_error("AccessDenied", 403), client_error("NoSuchBucket", 404), client_error("InvalidArgument", 400),
    as_s3fs_raises(client_error("NoSuchBucket", 404), FileNotFoundError(errno.ENOENT, "gone")),
    PermissionError(errno.EACCES, "denied"), ValueError("bad"),
])
def test_permanent_errors(exc):
    assert not classify(exc).transient


def test_a_missing_key_is_missing_but_a_missing_bucket_is_not():
    assert is_missing(as_s3fs_raises(client_error("NoSuchKey", 404), FileNotFoundError(2, "x")))
    assert not is_missing(as_s3fs_raises(client_error("NoSuchBucket", 404), FileNotFoundError(2, "x")))


def failing(errors: list[BaseException], result: str = "done"):
    calls = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def test_transient_errors_are_retried_with_growing_delays():
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=5, base_s=1.0, cap_s=100.0, sleep=sleeps.append)
    fn, calls = failing([client_error("SlowDown", 503)] * 4)
    assert call("write", "b/k", fn, policy) == "done"
    assert len(calls) == 5 and len(sleeps) == 4
    assert all(0 <= s <= 2**i for i, s in enumerate(sleeps))  # full jitter under base * 2**n


def test_a_permanent_error_fails_at_once_naming_path_code_and_errno():
    sleeps: list[float] = []
    fn, calls = failing([as_s3fs_raises(client_error("NoSuchBucket", 404), FileNotFoundError(2, "nope"))])
    with pytest.raises(StorageError) as info:
        call("write", "missing-bucket/run/x", fn, RetryPolicy(sleep=sleeps.append))
    assert calls == [1] and sleeps == []
    assert str(info.value).startswith("write failed for missing-bucket/run/x [ENOENT]: NoSuchBucket, HTTP 404")
    assert info.value.errno == errno.ENOENT


def test_giving_up_says_how_many_attempts():
    fn, calls = failing([client_error("SlowDown", 503)] * 10)
    with pytest.raises(StorageError, match="SlowDown, HTTP 503: .*after 3 attempts"):
        call("write", "b/k", fn, RetryPolicy(attempts=3, sleep=lambda s: None))
    assert len(calls) == 3


def test_reads_pass_a_missing_object_through():
    fn, calls = failing([as_s3fs_raises(client_error("NoSuchKey", 404), FileNotFoundError(2, "no key"))])
    with pytest.raises(FileNotFoundError) as info:
        call("read", "b/k", fn, RetryPolicy(sleep=lambda s: None), read=True)
    assert not isinstance(info.value, StorageError) and calls == [1]


def test_no_retry_starts_after_the_deadline_however_many_attempts_are_left():
    now = [0.0]

    def slow_failure() -> str:
        now[0] += 7.0  # each attempt takes 7 s to time out
        raise ReadTimeoutError(endpoint_url="http://x")

    sleeps: list[float] = []
    policy = RetryPolicy(attempts=100, base_s=0.01, cap_s=0.01, deadline_s=20.0, sleep=sleeps.append,
                         clock=lambda: now[0])
    with pytest.raises(StorageError, match=r"after 3 attempts in 21.0 s"):
        call("read", "b/k", slow_failure, policy)
    assert len(sleeps) == 2  # attempts at 0, 7 and 14 s; a fourth would start after 21 s > 20 s


def test_a_request_that_times_out_says_so():
    from fsspec.exceptions import FSTimeoutError

    fn, _ = failing([FSTimeoutError()])
    with pytest.raises(StorageError, match="no answer in time"):
        call("write", "b/k", fn, RetryPolicy(attempts=1))
