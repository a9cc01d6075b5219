"""Helpers for the corruption tests: a pristine run written by the real CheckpointManager, the damage done to it,
a training function for the trainer tests, and ``trainkeep verify`` through click's CliRunner.

A module of its own (not conftest) so that workers can import the training function by name.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep.cli.app import cli

NEWEST, PREVIOUS = "checkpoint_000002", "checkpoint_000001"
KEEP_ALL = tk.CheckpointConfig(checkpoint_score_attribute="loss", checkpoint_score_order="min")


def files_of(round_index: int) -> dict[str, bytes]:
    """Return the files of the checkpoint of ``round_index``: a model, a nested optimizer file, an empty file."""
    rng = random.Random(round_index)
    return {"model.bin": rng.randbytes(2048), "sub/opt.bin": rng.randbytes(500), "empty.txt": b""}


def write_source(root: str, files: dict[str, bytes]) -> tk.Checkpoint:
    """Write ``files`` under a fresh directory in ``root`` and return it as a Checkpoint."""
    d = tempfile.mkdtemp(dir=root)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "wb") as f:
            f.write(data)
    return tk.Checkpoint.from_directory(d)


def write_run(run: str, scratch: str, rounds: int = 3) -> None:
    """Write a finished run of ``rounds`` checkpoints (losses going down) with the real CheckpointManager."""
    with tk.CheckpointManager(run, KEEP_ALL) as manager:
        for i in range(rounds):
            manager.report({"epoch": i, "loss": 1.0 / (i + 1)}, write_source(scratch, files_of(i)))


def verify_cli(run: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``trainkeep verify RUN --json`` in-process; return the exit code, the rows and stderr."""
    result = CliRunner().invoke(cli, ["verify", run, "--json"])
    rows = json.loads(result.stdout) if result.stdout.strip() else []
    return result.exit_code, rows, result.stderr


# ---------------------------------------------------------------------------------------------- damage


def _edit_manifest(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        path = checkpoint / MANIFEST_NAME
        document = json.loads(path.read_bytes())
        edit(document)
        path.write_text(json.dumps(document))

    return apply


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        (checkpoint / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / rel).write_bytes(data)

    return apply


def _truncate(rel: str, size: Callable[[int], int]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        path = checkpoint / rel
        os.truncate(path, size(path.stat().st_size))

    return apply


def _flip_bit(rel: str) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        path = checkpoint / rel
        data = bytearray(path.read_bytes())
        bit = random.Random(rel).randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))

    return apply


def _symlink_outside(rel: str) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        outside = checkpoint.parent.parent / "outside.bin"
        outside.write_bytes(b"not the checkpoint's bytes" * 79)
        (checkpoint / rel).unlink()
        (checkpoint / rel).symlink_to(outside)

    return apply


def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        node = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda document: document.pop(key)


def _duplicate_first_file(document: dict[str, Any]) -> None:
    document["files"].append(dict(document["files"][0]))


def _manifest_bytes(make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        path = checkpoint / MANIFEST_NAME
        path.write_bytes(make(path.read_bytes()))

    return apply


# (id, damage to the checkpoint directory, a fragment of the reason verify must give)
DATA_DAMAGE = [
    ("truncated-to-0", _truncate("model.bin", lambda n: 0), "size is 0 bytes, manifest says 2048"),
    ("truncated-to-half", _truncate("model.bin", lambda n: n // 2), "size is 1024 bytes, manifest says 2048"),
    ("truncated-by-1", _truncate("sub/opt.bin", lambda n: n - 1), "size is 499 bytes, manifest says 500"),
    ("bit-flipped", _flip_bit("model.bin"), "checksum is"),
    ("bit-flipped-nested", _flip_bit("sub/opt.bin"), "checksum is"),
    ("empty-file-grown", _write("empty.txt", b"x"), "size is 1 bytes, manifest says 0"),
    ("file-deleted", lambda c: (c / "sub" / "opt.bin").unlink(), "file is missing"),
    ("extra-file", _write("stray.bin", b"left by someone"), "file is not listed in the manifest"),
    ("extra-nested-file", _write("sub/deeper/stray.bin", b"x"), "file is not listed in the manifest"),
    ("symlink-outside", _symlink_outside("model.bin"), "manifest says 2048"),
]
MANIFEST_DAMAGE = [
    ("manifest-truncated", _manifest_bytes(lambda raw: raw[: len(raw) // 2]), "not valid JSON"),
    ("manifest-empty", _manifest_bytes(lambda raw: b""), "not valid JSON"),
    ("manifest-not-json", _manifest_bytes(lambda raw: b"\x00\xffPK\x03\x04 pickle?"), "not valid JSON"),
    ("manifest-a-list", _manifest_bytes(lambda raw: b"[1, 2]"), "expected a JSON object"),
    ("manifest-deleted", lambda c: (c / MANIFEST_NAME).unlink(), "manifest is missing"),
    ("future-version", _edit_manifest(_set("version", value=99)), "format version 99"),
    ("other-schema", _edit_manifest(_set("schema", value="orbax")), "schema is 'orbax'"),
    ("no-name", _edit_manifest(_drop("name")), "missing field 'name'"),
    ("no-round", _edit_manifest(_drop("round")), "missing field 'round'"),
    ("no-time", _edit_manifest(_drop("time")), "missing field 'time'"),
    ("no-metrics", _edit_manifest(_drop("metrics")), "missing field 'metrics'"),
    ("no-files", _edit_manifest(_drop("files")), "missing field 'files'"),
    ("no-file-checksum", _edit_manifest(lambda d: d["files"][0].pop("checksum")), "missing field 'checksum'"),
    ("round-a-string", _edit_manifest(_set("round", value="2")), "field 'round' must be an integer >= 0"),
    ("round-negative", _edit_manifest(_set("round", value=-1)), "field 'round' must be an integer >= 0"),
    ("round-a-bool", _edit_manifest(_set("round", value=True)), "field 'round' must be an integer >= 0"),
    ("time-nan", _edit_manifest(_set("time", value=float("nan"))), "field 'time' must be a number"),
    ("metrics-a-list", _edit_manifest(_set("metrics", value=[])), "field 'metrics' must be an object"),
    ("files-an-object", _edit_manifest(_set("files", value={})), "field 'files' must be a list"),
    ("file-entry-a-string", _edit_manifest(_set("files", 0, value="model.bin")), "files[0] must be an object"),
    ("size-a-string", _edit_manifest(_set("files", 0, "size", value="2048")), "field 'size' must be"),
    ("size-a-float", _edit_manifest(_set("files", 0, "size", value=2048.0)), "field 'size' must be"),
    ("checksum-short", _edit_manifest(_set("files", 0, "checksum", value="abc")), "32-character hex string"),
    ("checksum-algorithm", _edit_manifest(_set("checksum_algorithm", value="md5")), "unknown checksum_algorithm"),
    ("path-dotdot", _edit_manifest(_set("files", 0, "path", value="../checkpoint_000001/model.bin")),
     "not a safe relative path"),
    ("path-absolute", _edit_manifest(_set("files", 0, "path", value="/etc/passwd")), "not a safe relative path"),
    ("path-backslash", _edit_manifest(_set("files", 0, "path", value="sub\\opt.bin")), "not a safe relative path"),
    ("path-nul", _edit_manifest(_set("files", 0, "path", value="model\x00.bin")), "not a safe relative path"),
    ("path-listed-twice", _edit_manifest(_duplicate_first_file), "is listed twice"),
    ("name-of-another", _edit_manifest(_set("name", value=PREVIOUS)), "manifest names checkpoint"),
    ("name-with-dotdot", _edit_manifest(_set("name", value="../run")), "bad checkpoint name"),
]
ALL_DAMAGE = DATA_DAMAGE + MANIFEST_DAMAGE


# ---------------------------------------------------------------------------------------------- training


def resume_and_report(config: dict[str, Any]) -> None:
    """Log what the run resumed from, then report ``config["epochs"]`` checkpoints."""
    start = tk.get_checkpoint()
    with open(config["log"], "a") as f:
        f.write(f"start {os.path.basename(start.path) if start else None}\n")
    for epoch in range(config["epochs"]):
        checkpoint = write_source(config["tmp"], {"model.bin": os.urandom(100)})
        tk.report({"epoch": epoch, "loss": 0.01 / (epoch + 1)}, checkpoint=checkpoint)
