"""Errors are one readable line and a documented exit code; ``--debug`` adds the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cli_helpers import assert_one_line_error, run_cli

from trainkeep._internal.core.layout import RUN_INDEX_NAME

COMMANDS = ("runs", "ls", "show", "best", "verify", "prune", "plot")


def test_missing_run_is_one_line_with_exit_4(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    for args in (("ls", missing), ("show", missing, "checkpoint_000000"), ("best", missing),
                 ("verify", missing), ("prune", missing, "--num-to-keep", "1"),
                 ("plot", missing, "--metric", "x"), ("runs", missing)):
        proc = run_cli(*args)
        assert_one_line_error(proc, 4, missing)
    assert not os.path.exists(missing)  # prune on a missing run must not create one


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "ls", str(tmp_path / "nope"))
    assert proc.returncode == 4
    assert "Traceback (most recent call last)" in proc.stderr and "RunNotFoundError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("trainkeep: error: no trainkeep run at")


def test_usage_errors_are_one_line_with_exit_2() -> None:
    assert_one_line_error(run_cli("ls"), 2, "Missing argument 'RUN'", "trainkeep ls --help")
    assert_one_line_error(run_cli("frobnicate"), 2, "frobnicate")
    assert_one_line_error(run_cli("ls", "x", "--colour"), 2, "--colour")


def test_python_dash_m_and_help_list_every_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "trainkeep", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert f"  {command} " in proc.stdout, command
    assert "Exit codes" in proc.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and "trainkeep, version 0.1.0" in version.stdout


def test_corrupt_index_is_a_warning_and_rebuilt(scored_run) -> None:
    index = os.path.join(scored_run.path, RUN_INDEX_NAME)
    with open(index, "w") as f:
        f.write("{ not json")
    proc = run_cli("ls", scored_run.path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [row["name"] for row in json.loads(proc.stdout)] == scored_run.checkpoints
    warnings = proc.stderr.strip().splitlines()
    assert warnings and all(line.startswith("trainkeep: warning: ") for line in warnings)
    assert any("corrupt" in line for line in warnings)
    with open(index) as f:
        assert f.read() == "{ not json"  # a read-only command repairs nothing


def test_newer_format_is_exit_5(scored_run) -> None:
    index = os.path.join(scored_run.path, RUN_INDEX_NAME)
    with open(index) as f:
        document = json.load(f)
    document["version"] = 99
    with open(index, "w") as f:
        json.dump(document, f)
    assert_one_line_error(run_cli("ls", scored_run.path), 5, "Upgrade trainkeep")
