"""The console script on an ``s3://`` run, against a real moto S3 server on 127.0.0.1 started here.

The subprocess finds the server through fsspec's own configuration variable (FSSPEC_S3_ENDPOINT_URL), as a
user with a private S3 endpoint would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import MIN_TOP2, SCORES, EngineState, run_cli, scored_reports, write_run

s3fs = pytest.importorskip("s3fs")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "moto_server exited"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto_server did not answer on {url} within {timeout}s")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a moto S3 server on a free port of 127.0.0.1 for this module; stop it afterwards."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def s3_run(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[EngineState, str, dict[str, str]]:
    """A finished run in a fresh bucket; returns its engine state, its s3:// URL and the CLI's environment."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    state = write_run(f"{bucket}/runs/scored", scored_reports(SCORES, metric_only_every=2), MIN_TOP2,
                      storage_filesystem=fs)
    return state, f"s3://{bucket}/runs/scored", {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": endpoint}


def test_ls_best_verify_prune_on_s3(s3_run: tuple[EngineState, str, dict[str, str]], endpoint: str) -> None:
    state, url, env = s3_run
    runs = run_cli("runs", url.rsplit("/", 1)[0], "--json", env=env)
    assert runs.returncode == 0, runs.stderr
    [row] = json.loads(runs.stdout)
    assert (row["name"], row["status"], row["path"]) == ("scored", "finished", url)

    listed = run_cli("ls", url, "--json", env=env)
    assert [r["name"] for r in json.loads(listed.stdout)] == state.checkpoints

    best = run_cli("best", url, env=env)
    assert best.stdout == f"{url}/{state.best}\n"

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    victim = f"{state.path}/{state.checkpoints[0]}/model.bin"
    data = bytearray(fs.cat_file(victim))
    data[-1] ^= 0x01
    fs.pipe_file(victim, bytes(data))
    verify = run_cli("verify", url, "--json", env=env)
    assert verify.returncode == 1
    assert [r["checkpoint"] for r in json.loads(verify.stdout) if not r["ok"]] == [state.checkpoints[0]]

    # verify marked the damaged checkpoint (here the best one) corrupt: retention neither ranks nor deletes it
    pruned = run_cli("prune", url, "--num-to-keep", "1", "--json", env=env)
    assert pruned.returncode == 0, pruned.stderr
    doomed = {r["name"] for r in json.loads(pruned.stdout) if r["action"] == "delete"}
    assert state.checkpoints[0] not in doomed and state.checkpoints[-1] not in doomed
    left = {Path(p).name for p in fs.ls(state.path, refresh=True)}
    assert not doomed & left and {state.checkpoints[0], state.checkpoints[-1]} <= left

    removed = run_cli("prune", url, "--corrupt", "--json", env=env)
    assert removed.returncode == 0, removed.stderr
    assert {r["name"] for r in json.loads(removed.stdout) if r["action"] == "delete"} == {state.checkpoints[0]}
    assert state.checkpoints[0] not in {Path(p).name for p in fs.ls(state.path, refresh=True)}
