"""``verify`` and ``prune`` through the real console script: corruption found, exactly what was listed deleted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from cli_helpers import KEEP_ALL, assert_one_line_error, run_cli, run_json

import trainkeep as tk
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.storage import LocalStorage


def _flip_last_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_verify_clean_run_exits_0(scored_run) -> None:
    rows = run_json("verify", scored_run.path)
    assert [r["checkpoint"] for r in rows] == scored_run.checkpoints
    assert all(r["ok"] and r["problems"] == [] for r in rows)
    table = run_cli("verify", scored_run.path)
    assert table.returncode == 0
    assert f"{len(rows)} of {len(rows)} checkpoints verified" in table.stdout


def test_verify_names_flipped_missing_and_vanished(scored_run) -> None:
    flipped, missing, vanished = scored_run.checkpoints
    _flip_last_byte(os.path.join(scored_run.path, flipped, "model.bin"))
    os.unlink(os.path.join(scored_run.path, missing, "sub", "opt.bin"))
    shutil.rmtree(os.path.join(scored_run.path, vanished))

    proc = run_cli("verify", scored_run.path, "--json")
    assert proc.returncode == 1, proc.stderr
    rows = {r["checkpoint"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {flipped, missing, vanished} and not any(r["ok"] for r in rows.values())
    [bad] = rows[flipped]["problems"]
    assert bad["path"] == "model.bin" and "checksum" in bad["reason"]
    assert rows[missing]["problems"] == [{"path": "sub/opt.bin", "reason": "file is missing", "kind": "corrupt"}]
    assert rows[vanished]["problems"][0]["reason"] == "manifest is missing"

    table = run_cli("verify", scored_run.path)
    assert table.returncode == 1
    for fragment in ("model.bin", "checksum is", "sub/opt.bin", "file is missing", "CORRUPT", "0 of 3 checkpoints verified; 3 corrupt"):
        assert fragment in table.stdout, fragment


def test_verify_one_checkpoint(scored_run) -> None:
    bad, good = scored_run.checkpoints[0], scored_run.checkpoints[1]
    _flip_last_byte(os.path.join(scored_run.path, bad, "sub", "opt.bin"))
    assert run_cli("verify", scored_run.path, good).returncode == 0
    proc = run_cli("verify", scored_run.path, bad, "--json")
    assert proc.returncode == 1
    assert [r["checkpoint"] for r in json.loads(proc.stdout)] == [bad]
    assert_one_line_error(run_cli("verify", scored_run.path, "checkpoint_424242"), 4, "checkpoint_424242")


def test_prune_dry_run_deletes_nothing_and_prune_deletes_what_it_listed(keep_all_run, snapshot) -> None:
    path = keep_all_run.path
    before = snapshot(path)
    planned = run_json("prune", path, "--num-to-keep", "2", "--dry-run")
    assert snapshot(path) == before  # nothing created, deleted or rewritten, not even the index
    doomed = {r["name"] for r in planned if r["action"] == "delete"}
    # val_loss 0.5, 0.1, 0.4, 0.2, 0.3 (min): top 2 are rounds 1 and 3, the latest (round 4) stays too.
    assert doomed == {"checkpoint_000000", "checkpoint_000002"}
    assert not any(r["deleted"] for r in planned)
    reasons = {r["name"]: r["reason"] for r in planned}
    assert reasons["checkpoint_000000"] == "outside the top 2 by val_loss (lowest first)"
    assert reasons["checkpoint_000004"].startswith("latest (never deleted)")

    table = run_cli("prune", path, "--num-to-keep", "2", "--dry-run")
    assert "would delete" in table.stdout and "nothing was deleted" in table.stdout
    assert snapshot(path) == before

    done = run_json("prune", path, "--num-to-keep", "2")
    assert {r["name"] for r in done if r["action"] == "delete"} == doomed
    assert all(r["deleted"] for r in done if r["action"] == "delete")
    on_disk = {n for n in os.listdir(path) if n.startswith("checkpoint_")}
    assert on_disk == set(keep_all_run.checkpoints) - doomed
    state = read_run(LocalStorage(), path)
    assert [c.name for c in state.index.checkpoints] == sorted(on_disk)
    assert state.index.status == "failed"  # the run's status is preserved
    assert state.index.checkpoint_config["num_to_keep"] is None  # and so is its own retention config


def test_prune_with_another_ranking(keep_all_run) -> None:
    rows = run_json("prune", keep_all_run.path, "--num-to-keep", "1", "--score-attribute", "epoch",
                    "--order", "max", "--dry-run")
    assert [r["name"] for r in rows if r["action"] == "keep"] == ["checkpoint_000004"]
    assert [r["score"] for r in rows] == [0, 1, 2, 3, 4]


def test_prune_refused_while_this_process_holds_the_run(keep_all_run, snapshot) -> None:
    manager = tk.CheckpointManager(keep_all_run.path, KEEP_ALL)
    try:
        before = snapshot(keep_all_run.path)
        proc = run_cli("prune", keep_all_run.path, "--num-to-keep", "1")
        assert_one_line_error(proc, 3, f"pid {os.getpid()}")
        assert snapshot(keep_all_run.path) == before
    finally:
        manager.close()


def test_prune_refused_while_another_process_holds_the_run(keep_all_run, snapshot) -> None:
    code = textwrap.dedent(f"""
        import sys
        import trainkeep as tk
        manager = tk.CheckpointManager({keep_all_run.path!r}, tk.CheckpointConfig(**{KEEP_ALL.to_dict()!r}))
        print("ready", flush=True)
        sys.stdin.readline()
        manager.close()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        before = snapshot(keep_all_run.path)
        proc = run_cli("prune", keep_all_run.path, "--num-to-keep", "1")
        assert_one_line_error(proc, 3, f"pid {holder.pid}", "already held")
        assert snapshot(keep_all_run.path) == before
    finally:
        holder.communicate("done\n", timeout=60)
    assert holder.returncode == 0
    assert run_cli("prune", keep_all_run.path, "--num-to-keep", "1").returncode == 0


def test_prune_bad_input_deletes_nothing(keep_all_run, snapshot) -> None:
    before = snapshot(keep_all_run.path)
    assert_one_line_error(run_cli("prune", keep_all_run.path, "--num-to-keep", "0"), 2, "--num-to-keep", "0")
    assert_one_line_error(run_cli("prune", keep_all_run.path, "--num-to-keep", "1", "--order", "best"), 2,
                          "--order", "best")
    assert_one_line_error(run_cli("prune", keep_all_run.path, "--num-to-keep", "1", "--score-attribute",
                                  "val_los"), 2, "'val_los'", "val_loss", "nothing was deleted")
    assert snapshot(keep_all_run.path) == before
