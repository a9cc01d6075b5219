"""A real child process dies (``os._exit``) at an exact step of the commit or retention protocol; the parent
reopens the run and checks DESIGN §5's invariants. The SIGKILL test samples random points; this one pins the
points that matter most, so each invariant is broken on purpose at least once per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import trainkeep as tk
from trainkeep.layout import HISTORY_NAME, INTERNAL_DIR, MANIFEST_NAME, RUN_INDEX_NAME
from trainkeep.run import verify_checkpoint
from trainkeep.storage import LocalStorage

DIED = 77

_CHILD = textwrap.dedent("""
    import json, os, sys, tempfile
    import trainkeep as tk
    from trainkeep.storage import LocalStorage

    run_dir, plan = sys.argv[1], json.loads(sys.argv[2])
    seen = {}

    class DyingStorage(LocalStorage):
        # Dies before the operation `plan["die"]` once `plan["after"]` has happened `plan["after_n"]` times.
        def _step(self, op, path):
            key = op + ":" + os.path.basename(path)
            if key == plan["die"] and seen.get(plan["after"], 0) >= plan["after_n"]:
                os._exit(plan["exit_code"])
            seen[key] = seen.get(key, 0) + 1

        def write_atomic(self, path, data):
            self._step("write", path)
            super().write_atomic(path, data)

        def delete_file(self, path):
            self._step("delete_file", path)
            super().delete_file(path)

        def delete_tree(self, path):
            self._step("delete_tree", path)
            super().delete_tree(path)

    config = tk.CheckpointConfig(**plan["config"])
    manager = tk.CheckpointManager(run_dir, config, storage=DyingStorage())
    for report in plan["reports"]:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.bin"), "wb") as f:
                f.write(json.dumps(report["metrics"]).encode() * 100)
            manager.report(report["metrics"], tk.Checkpoint.from_directory(d), report.get("name"))
    manager.close()
""")


def _run_child(run_dir: str, reports: list[dict[str, Any]], die: str, after: str = "", after_n: int = 0,
               config: dict[str, Any] | None = None) -> int:
    plan = {"reports": reports, "die": die, "after": after, "after_n": after_n, "config": config or {},
            "exit_code": DIED}
    done = subprocess.run([sys.executable, "-c", _CHILD, run_dir, json.dumps(plan)], timeout=120,
                          capture_output=True, text=True)
    assert done.returncode in (0, DIED), done.stderr
    return done.returncode


def _assert_consistent(run_dir: str, manager: tk.CheckpointManager) -> list[str]:
    """Check index == valid manifests on storage, no debris, every kept checkpoint verifies; return the names."""
    names = [Path(c.path).name for c, _ in manager.checkpoints]
    present = sorted(n for n in os.listdir(run_dir) if Path(run_dir, n).is_dir() and n != INTERNAL_DIR)
    assert present == sorted(names), "a directory without a valid manifest survived the reopen"
    assert os.listdir(Path(run_dir, INTERNAL_DIR)) == ["lock"]
    for name in names:
        assert verify_checkpoint(LocalStorage(), run_dir, name) == []
    rounds = [json.loads(line)["round"] for line in Path(run_dir, HISTORY_NAME).read_bytes().splitlines()]
    assert rounds == list(range(manager.next_round))
    return names


def _reports(*names: str | None) -> list[dict[str, Any]]:
    return [{"metrics": {"epoch": i, "loss": 10.0 - i}, "name": name} for i, name in enumerate(names)]


def test_death_after_manifest_before_index_is_reconciled(run_dir: str) -> None:
    code = _run_child(run_dir, _reports(None, None, None), die=f"write:{RUN_INDEX_NAME}",
                      after=f"write:{MANIFEST_NAME}", after_n=2)
    assert code == DIED
    index = json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())
    assert [e["name"] for e in index["checkpoints"]] == ["checkpoint_000000"]  # the crash left it unlisted
    with tk.CheckpointManager(run_dir) as manager:
        assert _assert_consistent(run_dir, manager) == ["checkpoint_000000", "checkpoint_000001"]
        assert manager.next_round == 2
        assert manager.resume_checkpoint() == tk.Checkpoint(os.path.join(run_dir, "checkpoint_000001"))


@pytest.mark.parametrize("die", [f"delete_file:{MANIFEST_NAME}", "delete_tree:checkpoint_000000"])
def test_death_inside_retention_finishes_the_delete_on_reopen(run_dir: str, die: str) -> None:
    code = _run_child(run_dir, _reports(None, None), die=die, config={"num_to_keep": 1})
    assert code == DIED
    index = json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())
    assert index["retiring"] == ["checkpoint_000000"]  # the index let go of it before any file was deleted
    assert [e["name"] for e in index["checkpoints"]] == ["checkpoint_000001"]
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert _assert_consistent(run_dir, manager) == ["checkpoint_000001"]
    assert json.loads(Path(run_dir, RUN_INDEX_NAME).read_text())["retiring"] == []


def test_a_reused_name_of_a_deleted_checkpoint_survives_a_crash_before_the_index(run_dir: str) -> None:
    # "a" is committed, deleted by retention (the index lists it as retiring), then committed again under the
    # same name; the process dies right after the new manifest. The new "a" must not be taken for the old one.
    code = _run_child(run_dir, _reports("a", "b", "a"), die=f"write:{RUN_INDEX_NAME}",
                      after=f"write:{MANIFEST_NAME}", after_n=3, config={"num_to_keep": 1})
    assert code == DIED
    assert Path(run_dir, "a", MANIFEST_NAME).is_file()
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        names = _assert_consistent(run_dir, manager)
        assert names == ["b", "a"]
        assert manager.checkpoints[-1][1] == {"epoch": 2, "loss": 8.0}
        resume = manager.resume_checkpoint()
        assert resume is not None and Path(resume.path).name == "a"


def test_death_on_open_before_anything_changes_leaves_the_run_usable(run_dir: str) -> None:
    assert _run_child(run_dir, _reports(None), die="none") == 0
    code = _run_child(run_dir, _reports(None), die=f"write:{RUN_INDEX_NAME}")  # dies in the constructor
    assert code == DIED
    with tk.CheckpointManager(run_dir) as manager:
        assert _assert_consistent(run_dir, manager) == ["checkpoint_000000"]
