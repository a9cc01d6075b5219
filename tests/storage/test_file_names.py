"""File names through the whole commit path, on every backend (issue 14, item 1).

A name that ``report()`` accepts is stored, verified, resumed from, restored by ``to_directory`` and shown by the
CLI (``show``, ``verify``) unchanged, on the local disk, fsspec's memory filesystem and S3. A name that cannot
make that trip is refused at ``report()`` with ``UnsupportedCheckpointFileError`` (a ValueError) naming the path
and why, and nothing is written. Before the fix a backslash committed, never verified, and resume returned None.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep.cli import cli
from trainkeep.errors import UnsupportedCheckpointFileError

ACCEPTED = [
    "plain.bin",
    "with space.bin",
    " leading and trailing. ",
    "ünïcødé 名前 😀.bin",
    "x" * 255,  # NAME_MAX: to_directory must not add a suffix to it
    "glob*?[x]{a,b}.bin",
    "url::chain#frag%20?q=1&b=2.bin",
    "'quotes\"and$HOME~",
    "sub dir/nested.d/deep.bin",
    "a:/b.bin",  # a directory "a:" (what "a://b" is on a disk)
]
REFUSED = [
    ("back\\slash.bin", "backslash"),
    ("new\nline.bin", "control character"),
    ("tab\there", "control character"),
    ("bell\x07", "control character"),
    ("del\x7f", "control character"),
    ("c1\x85", "control character"),
    ("sep\u2028arator", "control character"),
    (os.fsdecode(b"latin1-\xe9.bin"), "not valid UTF-8"),
    (".trainkeep_state", "reserved"),
    ("mine.trainkeep_tmp", "reserved"),
    ("dir\\name/inner.bin", "backslash"),
    (".trainkeep_manifest.json/inner.bin", "reserved"),  # a directory where the manifest goes
]


def _write(root: Path, names: list[str]) -> dict[str, bytes]:
    files = {name: f"content of {name!r}".encode("utf-8", "surrogateescape") for name in names}
    for name, data in files.items():
        target = root.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files



def _cli(backend: Any, *args: str) -> tuple[int, str]:
    """Run the CLI on ``backend``: in this process for memory (it lives here), as the console script otherwise."""
    if backend.name == "memory":
        result = CliRunner().invoke(cli, list(args))
        return result.exit_code, result.output
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": os.pathsep.join(sys.path)}
    if backend.name == "s3":
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                   FSSPEC_S3_ENDPOINT_URL=backend.env["TK_S3_ENDPOINT"])
    proc = subprocess.run([sys.executable, "-m", "trainkeep", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_every_accepted_name_round_trips(backend: Any, tmp_path: Path,
                                         read_tree: Callable[[str], dict[str, bytes]]) -> None:
    files = _write(tmp_path / "src", ACCEPTED)
    with backend.manager() as manager:
        committed = manager.report({"epoch": 0}, tk.Checkpoint.from_directory(tmp_path / "src"))
        assert committed is not None
        assert verify_checkpoint(manager.storage, manager.path, "checkpoint_000000") == []
        assert manager.resume_checkpoint() == committed
    restored = committed.to_directory(str(tmp_path / "out"))
    assert read_tree(restored) == files
    url = backend.url("run")
    code, out = _cli(backend, "verify", url, "--json")
    assert code == 0, out
    code, out = _cli(backend, "show", url, "checkpoint_000000", "--json")
    assert code == 0, out
    assert sorted(entry["path"] for entry in json.loads(out)["files"]) == sorted(files)


@pytest.mark.parametrize(("name", "why"), REFUSED, ids=[ascii(n) for n, _ in REFUSED])
def test_a_name_that_cannot_round_trip_is_refused_and_nothing_is_written(
        backend: Any, tmp_path: Path, name: str, why: str) -> None:
    _write(tmp_path / "src", ["good.bin", name])
    with backend.manager() as manager:
        manager.report({"epoch": 0}, tk.Checkpoint.from_directory(_mk_ok(tmp_path / "ok")))
        before = sorted(backend.fs.find(manager.path))
        index_before = manager.storage.read_bytes(f"{manager.path}/trainkeep_run.json")
        with pytest.raises(UnsupportedCheckpointFileError) as info:
            manager.report({"epoch": 1}, tk.Checkpoint.from_directory(tmp_path / "src"))
        assert isinstance(info.value, ValueError)
        assert why in str(info.value) and info.value.path.endswith(name.split("/")[0])
        backend.fs.invalidate_cache()
        assert sorted(backend.fs.find(manager.path)) == before  # no staged dir, no intent, no history row
        assert manager.storage.read_bytes(f"{manager.path}/trainkeep_run.json") == index_before
        assert manager.next_round == 1
        assert manager.resume_checkpoint() is not None


def _mk_ok(root: Path) -> Path:
    root.mkdir()
    (root / "model.bin").write_bytes(b"weights")
    return root
