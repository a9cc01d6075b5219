"""Every command on a ``memory://`` run, in-process through click's CliRunner (a subprocess cannot see it).

The memory filesystem goes through FsspecStorage, the same code path as s3:// and gs://.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from cli_helpers import MIN_TOP2, SCORES, EngineState, scored_reports, write_run
from click.testing import CliRunner, Result
from PIL import Image

import trainkeep as tk
from trainkeep.cli import cli


@pytest.fixture
def base() -> Iterator[str]:
    """A fresh directory on the process's memory filesystem, removed afterwards."""
    path = f"/cli-tests/{uuid.uuid4().hex}"
    yield f"memory://{path}"
    fs = fsspec.filesystem("memory")
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture
def remote_run(base: str) -> EngineState:
    return write_run(f"{base}/scored", scored_reports(SCORES, metric_only_every=2), MIN_TOP2)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def invoke_json(*args: str) -> object:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def url(path: str) -> str:
    return f"memory://{path}"


def test_runs_on_memory(base: str, remote_run: EngineState) -> None:
    write_run(f"{base}/stopped", scored_reports([0.5]), MIN_TOP2, status="running")  # no holder any more
    held = tk.CheckpointManager(f"{base}/held")
    try:
        rows = {row["name"]: row for row in invoke_json("runs", base)}
    finally:
        held.close()
    tk.CheckpointManager(f"{base}/stopped", MIN_TOP2).close()  # the status probe let go of the free lock
    assert {n: r["status"] for n, r in rows.items()} == {
        "scored": "finished", "stopped": "interrupted", "held": "running"}
    assert rows["scored"]["path"] == url(remote_run.path)
    assert rows["scored"]["size"] == sum(m.size for m in remote_run.manifests.values())


def test_ls_show_best_on_memory(remote_run: EngineState) -> None:
    run = url(remote_run.path)
    rows = invoke_json("ls", run)
    assert [r["name"] for r in rows] == remote_run.checkpoints
    assert [r["size"] for r in rows] == [remote_run.manifests[n].size for n in remote_run.checkpoints]
    assert {r["name"]: r["role"] for r in rows}[remote_run.best] == "best"
    doc = invoke_json("show", run, remote_run.best)
    assert isinstance(doc, dict)
    assert doc["files"] == [f.to_dict() for f in remote_run.manifests[remote_run.best].files]
    assert doc["path"] == f"{run}/{remote_run.best}"
    best = invoke("best", run)
    assert best.exit_code == 0 and best.stdout == f"{run}/{remote_run.best}\n"
    assert tk.Checkpoint(best.stdout.strip()).get_metadata() == {"epoch": SCORES.index(0.2)}


def test_verify_on_memory_finds_a_flipped_byte(remote_run: EngineState) -> None:
    run = url(remote_run.path)
    assert invoke("verify", run).exit_code == 0
    fs = fsspec.filesystem("memory")
    victim = f"{remote_run.path}/{remote_run.best}/model.bin"
    data = bytearray(fs.cat_file(victim))
    data[0] ^= 0x01
    fs.pipe_file(victim, bytes(data))
    result = invoke("verify", run, "--json")
    assert result.exit_code == 1
    bad = [r for r in json.loads(result.stdout) if not r["ok"]]
    assert [(r["checkpoint"], [p["path"] for p in r["problems"]]) for r in bad] == [(remote_run.best,
                                                                                     ["model.bin"])]


def test_prune_on_memory(remote_run: EngineState) -> None:
    run = url(remote_run.path)
    fs = fsspec.filesystem("memory")
    before = sorted(fs.find(remote_run.path))
    planned = invoke_json("prune", run, "--num-to-keep", "1", "--dry-run")
    assert sorted(fs.find(remote_run.path)) == before
    doomed = {r["name"] for r in planned if r["action"] == "delete"}
    assert doomed == set(remote_run.checkpoints) - {remote_run.best, remote_run.checkpoints[-1]}

    held = tk.CheckpointManager(run, MIN_TOP2)  # a writer resuming the run with its own config
    try:
        refused = invoke("prune", run, "--num-to-keep", "1")
        assert refused.exit_code == 3 and "already held" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        held.close()
    assert all(fs.exists(f"{remote_run.path}/{name}") for name in doomed)

    done = invoke_json("prune", run, "--num-to-keep", "1")
    assert {r["name"] for r in done if r["deleted"]} == doomed
    assert not any(fs.exists(f"{remote_run.path}/{name}") for name in doomed)
    assert [r["name"] for r in invoke_json("ls", run)] == [n for n in remote_run.checkpoints if n not in doomed]


def test_plot_on_memory(remote_run: EngineState, tmp_path: Path) -> None:
    out = tmp_path / "remote.png"
    result = invoke("plot", url(remote_run.path), "--metric", "val_loss", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 600


def test_errors_in_process_are_one_line(base: str) -> None:
    result = invoke("ls", f"{base}/missing")
    assert result.exit_code == 4
    assert result.stderr.startswith("trainkeep: error: no trainkeep run at") and result.stderr.count("\n") == 1
    debug = invoke("--debug", "ls", f"{base}/missing")
    assert debug.exit_code == 4 and "Traceback" in debug.stderr
