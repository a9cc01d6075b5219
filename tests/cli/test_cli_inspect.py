"""The read-only commands (runs, ls, show, best) through the real console script, on runs the engine wrote."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from cli_helpers import (
    MIN_TOP2,
    Report,
    assert_one_line_error,
    run_cli,
    run_json,
    scored_reports,
    write_run,
)
from click.testing import CliRunner

import trainkeep as tk
from trainkeep.cli import cli


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _kill_mid_run(run_dir: Path) -> None:
    """Commit one checkpoint in a child process, then SIGKILL it: its index still says "running"."""
    code = textwrap.dedent(f"""
        import os, signal, tempfile
        import trainkeep as tk
        manager = tk.CheckpointManager({str(run_dir)!r})
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "w.bin"), "wb") as f:
                f.write(b"x" * 10)
            manager.report({{"loss": 1.0}}, checkpoint=tk.Checkpoint.from_directory(d))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_runs_reports_status_counts_and_sizes(tmp_path: Path) -> None:
    base = tmp_path / "runs"
    done = write_run(base / "done", scored_reports([0.5, 0.4]), MIN_TOP2)
    failed = write_run(base / "crashed", scored_reports([0.5]), tk.CheckpointConfig(), status="failed")
    _kill_mid_run(base / "killed")
    held = tk.CheckpointManager(base / "held")
    (base / "notes").mkdir()
    (base / "readme.txt").write_text("not a run")
    try:
        held.report({"loss": 2.0})
        rows = {row["name"]: row for row in run_json("runs", str(base))}
        table = run_cli("runs", str(base))
        held.report({"loss": 1.0})  # the probe did not take the live writer's lock away
    finally:
        held.close()
    assert set(rows) == {"done", "crashed", "killed", "held"}
    assert {n: r["status"] for n, r in rows.items()} == {
        "done": "finished", "crashed": "failed", "killed": "interrupted", "held": "running"}
    assert rows["done"]["checkpoints"] == len(done.checkpoints) == 2
    assert rows["done"]["size"] == sum(m.size for m in done.manifests.values())
    assert rows["crashed"]["size"] == sum(m.size for m in failed.manifests.values())
    assert rows["done"]["reports"] == len(done.history)
    assert abs(_seconds(rows["done"]["last_report"]) - done.history[-1]["time"]) < 1e-5
    assert rows["done"]["path"] == str(base / "done")
    assert rows["killed"]["checkpoints"] == 1 and rows["held"]["checkpoints"] == 0
    assert table.returncode == 0, table.stderr
    assert "interrupted" in table.stdout and "finished" in table.stdout and "KiB" in table.stdout
    tk.CheckpointManager(base / "killed").close()  # the killed writer's lock was released by the kernel


def test_runs_on_a_path_without_runs_exits_1(tmp_path: Path) -> None:
    proc = run_cli("runs", str(tmp_path), "--json")
    assert proc.returncode == 1 and proc.stdout.strip() == "[]"


def test_ls_json_matches_the_engine(scored_run) -> None:
    rows = run_json("ls", scored_run.path)
    assert [r["name"] for r in rows] == scored_run.checkpoints
    roles = {r["name"]: r["role"] for r in rows}
    latest = scored_run.checkpoints[-1]
    assert roles[latest] == "kept as latest only"
    assert roles[scored_run.best] == "best"
    assert sorted(roles.values()) == ["best", "kept", "kept as latest only"]
    for row in rows:
        manifest = scored_run.manifests[row["name"]]
        assert row["round"] == manifest.round
        assert abs(_seconds(row["time"]) - manifest.time) < 1e-5
        assert row["size"] == manifest.size
        assert row["metrics"] == manifest.metrics
        assert row["score"] == manifest.metrics["val_loss"]
        assert row["reason"] == scored_run.decision.reasons[row["name"]]


def test_ls_all_adds_reports_and_deleted_checkpoints(scored_run) -> None:
    rows = run_json("ls", scored_run.path, "--all")
    assert [r["round"] for r in rows] == [h["round"] for h in scored_run.history]
    for row, report in zip(rows, scored_run.history, strict=True):
        assert row["name"] == report["checkpoint"]
        assert row["metrics"] == report["metrics"]
        if report["checkpoint"] is None:
            assert row["role"] == "report" and row["size"] is None
        elif report["checkpoint"] not in scored_run.checkpoints:
            assert row["role"] == "deleted" and row["size"] is None
    assert sum(r["role"] == "deleted" for r in rows) == 6 - len(scored_run.checkpoints)


def test_ls_table_shows_roles_sizes_and_folds_metrics(scored_run) -> None:
    proc = run_cli("ls", scored_run.path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "val_loss (min)" in out
    assert "kept as latest only" in out
    assert all(name in out for name in scored_run.checkpoints)
    assert "KiB" in out
    assert "+2 more" in out  # six other metrics: four shown, two folded
    assert "retention keeps the top 2 by val_loss (min)" in out


def test_show_lists_the_manifest_and_metadata(scored_run) -> None:
    name = scored_run.best
    manifest = scored_run.manifests[name]
    doc = run_json("show", scored_run.path, name)
    assert doc["name"] == name and doc["round"] == manifest.round
    assert doc["path"] == f"{scored_run.path}/{name}"
    assert doc["files"] == [f.to_dict() for f in manifest.files]
    assert doc["size"] == manifest.size
    assert doc["metrics"] == manifest.metrics
    assert doc["metadata"] == {"epoch": manifest.metrics["epoch"]}
    assert doc["role"] == "best"
    table = run_cli("show", scored_run.path, name)
    assert table.returncode == 0, table.stderr
    for entry in manifest.files:
        assert entry.checksum in table.stdout and entry.path in table.stdout


def test_show_unknown_or_bad_checkpoint_name(scored_run) -> None:
    missing = run_cli("show", scored_run.path, "checkpoint_999999")
    assert_one_line_error(missing, 4, "checkpoint_999999", scored_run.checkpoints[0])
    bad = run_cli("show", scored_run.path, "../escape")
    assert_one_line_error(bad, 2, "'../escape'")


def test_best_prints_only_the_path(scored_run) -> None:
    proc = run_cli("best", scored_run.path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == f"{scored_run.path}/{scored_run.best}\n"
    newest = max(scored_run.checkpoints, key=lambda n: scored_run.metrics[n]["epoch"])
    by_epoch = run_cli("best", scored_run.path, "--metric", "epoch", "--mode", "max")
    assert by_epoch.stdout == f"{scored_run.path}/{newest}\n"
    by_nested = run_cli("best", scored_run.path, "--metric", "nested/acc", "--mode", "max")
    assert by_nested.stdout == f"{scored_run.path}/{scored_run.best}\n"


def test_best_errors(scored_run, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("best", scored_run.path, "--metric", "epoch"), 2, "--mode")
    assert_one_line_error(run_cli("best", scored_run.path, "--metric", "nope", "--mode", "min"), 1, "'nope'",
                          "val_loss")
    plain = write_run(tmp_path / "plain", [Report({"loss": 1.0}, {"a": b"1"})], tk.CheckpointConfig())
    assert_one_line_error(run_cli("best", plain.path), 2, "no checkpoint_score_attribute", "--metric")
    ok = run_cli("best", plain.path, "--metric", "loss", "--mode", "min")
    assert ok.stdout == f"{plain.path}/{plain.checkpoints[0]}\n"
    empty = write_run(tmp_path / "empty", [Report({"loss": 1.0})], MIN_TOP2)
    assert_one_line_error(run_cli("best", empty.path), 1, "no committed checkpoints")
    assert os.path.isdir(empty.path)


def test_runs_probe_lets_go_of_a_free_lock(scored_run) -> None:
    """In-process, so that a lock the probe kept would still be held when the next writer opens the run."""
    write_run(Path(scored_run.path).parent / "stopped", scored_reports([0.5]), MIN_TOP2, status="running")
    result = CliRunner().invoke(cli, ["runs", str(Path(scored_run.path).parent), "--json"])
    assert result.exit_code == 0, result.stderr
    assert {row["name"]: row["status"] for row in json.loads(result.stdout)} == {
        "scored": "finished", "stopped": "interrupted"}
    tk.CheckpointManager(Path(scored_run.path).parent / "stopped", MIN_TOP2).close()


def test_best_and_prune_find_a_nested_score_however_it_is_spelled(tmp_path: Path) -> None:
    """{"nested": {"sub/attr": 5}} was ranked as missing: `best` named a worse checkpoint, `prune` deleted it."""
    spellings = [({"nested": {"sub/attr": 5}}, b"5"), ({"nested/sub": {"attr": 3}}, b"3"),
                 ({"nested": {"sub": {"attr": 4}}}, b"4"), ({"nested/sub/attr": 1}, b"1")]
    config = tk.CheckpointConfig(checkpoint_score_attribute="nested/sub/attr", checkpoint_score_order="max")
    run = write_run(tmp_path / "nested", [Report(m, {"w": data}) for m, data in spellings], config)
    assert run_cli("best", run.path).stdout == f"{run.path}/{run.checkpoints[0]}\n"
    by_min = run_cli("best", run.path, "--metric", "nested/sub/attr", "--mode", "min")
    assert by_min.stdout == f"{run.path}/{run.checkpoints[3]}\n"
    rows = run_json("ls", run.path, "--json")
    assert [row["score"] for row in rows] == [5, 3, 4, 1]
    assert [row["role"] for row in rows][0] == "best"
    plan = {row["name"]: row["action"] for row in run_json("prune", run.path, "--num-to-keep", "1", "--dry-run",
                                                           "--json")}
    assert plan[run.checkpoints[0]] == "keep" and plan[run.checkpoints[1]] == "delete"


def test_best_and_ls_read_ints_beyond_the_float_range(tmp_path: Path) -> None:
    """A stored 10**400 crashed `best` and `ls` with OverflowError; it ranks as missing instead."""
    reports = [Report({"big": 10**400, "loss": 1.0}, {"w": b"0"}), Report({"big": 10**300, "loss": 2.0}, {"w": b"1"})]
    run = write_run(tmp_path / "big", reports, tk.CheckpointConfig(checkpoint_score_attribute="loss"))
    assert run_cli("best", run.path, "--metric", "big", "--mode", "max").stdout == f"{run.path}/{run.checkpoints[1]}\n"
    assert run_cli("best", run.path, "--metric", "big", "--mode", "min").stdout == f"{run.path}/{run.checkpoints[1]}\n"
    tk.CheckpointManager(run.path, tk.CheckpointConfig(checkpoint_score_attribute="big")).close()  # rank by it
    listing = run_cli("ls", run.path)
    assert listing.returncode == 0 and "OverflowError" not in listing.stderr
    rows = {row["name"]: row for row in run_json("ls", run.path, "--json")}
    assert rows[run.checkpoints[1]]["role"] == "best, latest" and rows[run.checkpoints[0]]["score"] == 10**400
    assert run_cli("best", run.path).stdout == f"{run.path}/{run.checkpoints[1]}\n"
