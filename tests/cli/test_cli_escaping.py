"""Control characters in names never break a row of the CLI's tables; JSON output keeps them as they are.

A run can hold such names although ``report()`` now refuses them in file names: metric names may hold any
character, and a checkpoint written by an older trainkeep may list a file whose name has a newline (issue 14.13).
Before the fix a newline in a name started a new line in the middle of a row of ``show``, ``ls`` and ``verify``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep.cli.common import escape_text

ODD_FILE = "line\nbreak\tand\x1bescape.bin"
ODD_METRIC = "loss\nval"


@pytest.fixture
def odd_run(tmp_path: Path) -> Path:
    """A run whose one checkpoint lists a file named ``ODD_FILE`` (as an older trainkeep could commit it)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"weights")
    (src / "placeholder.bin").write_bytes(b"odd file")
    run = tmp_path / "run"
    with tk.CheckpointManager(str(run)) as manager:
        manager.report({ODD_METRIC: 0.5, "epoch": 1}, tk.Checkpoint.from_directory(src))
    checkpoint = run / "checkpoint_000000"
    (checkpoint / "placeholder.bin").rename(checkpoint / ODD_FILE)
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        if entry["path"] == "placeholder.bin":
            entry["path"] = ODD_FILE
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(manifest))
    return run


def _rows_intact(out: str, *cells: str) -> None:
    """Every escaped cell shows on one line, and no raw control character reached the output."""
    for cell in cells:
        assert any(escape_text(cell) in line for line in out.splitlines()), (cell, out)
    assert not any(c in out for c in "\t\x1b\r"), out
    assert "\nbreak" not in out and "\nval" not in out, out


def test_show_escapes_file_and_metric_names(odd_run: Path) -> None:
    proc = run_cli("show", str(odd_run), "checkpoint_000000")
    assert proc.returncode == 0, proc.stderr
    _rows_intact(proc.stdout, ODD_FILE, ODD_METRIC)
    assert "line\\nbreak\\tand\\x1bescape.bin" in proc.stdout


def test_show_json_keeps_names_unchanged(odd_run: Path) -> None:
    proc = run_cli("show", str(odd_run), "checkpoint_000000", "--json")
    document = json.loads(proc.stdout)
    assert ODD_FILE in [f["path"] for f in document["files"]]
    assert ODD_METRIC in document["metrics"]


def test_ls_escapes_metric_names(odd_run: Path) -> None:
    proc = run_cli("ls", str(odd_run))
    assert proc.returncode == 0, proc.stderr
    _rows_intact(proc.stdout, ODD_METRIC)
    assert ODD_METRIC in json.loads(run_cli("ls", str(odd_run), "--json").stdout)[0]["metrics"]


def test_verify_escapes_the_names_of_bad_files(odd_run: Path) -> None:
    (odd_run / "checkpoint_000000" / ODD_FILE).write_bytes(b"changed!")
    proc = run_cli("verify", str(odd_run))
    assert proc.returncode == 1, proc.stderr
    _rows_intact(proc.stdout, ODD_FILE)
    [row] = json.loads(run_cli("verify", str(odd_run), "--json").stdout)
    assert [p["path"] for p in row["problems"]] == [ODD_FILE]


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain [x] :smile: a\\b", "plain [x] :smile: a\\b"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("bell\x07 del\x7f c1\x85", "bell\\x07 del\\x7f c1\\x85"),
    ("sep\u2028par\u2029", "sep\\u2028par\\u2029"),
    ("byte\udce9", "byte\\xe9"),
])
def test_escape_text(raw: str, shown: str) -> None:
    assert escape_text(raw) == shown
