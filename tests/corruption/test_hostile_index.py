"""A run index that is not exactly valid is rebuilt from the manifests before retention runs (issue 14, item 6).

Hostile or hand-edited indexes: JSON nested 100,000 deep, duplicated entries, an entry whose manifest says
otherwise, unknown fields, fields of the wrong type. Each is rebuilt with a warning; none raises, none lists a
checkpoint twice, and none makes retention delete a checkpoint the policy keeps.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import corruption_helpers as h
import pytest
from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME, RUN_INDEX_NAME
from trainkeep._internal.core.manifest import parse_run_index
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.cli.app import cli

OLDEST = "checkpoint_000000"
KEEP_TWO = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    (root / "scratch").mkdir()
    h.write_run(str(root / "run"), str(root / "scratch"))  # losses 1, 1/2, 1/3
    return root / "run"


@pytest.fixture
def run(pristine: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "storage" / "run"
    shutil.copytree(pristine, dest, symlinks=True)
    return dest


def _edit_index(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        document = json.loads((run / RUN_INDEX_NAME).read_bytes())
        edit(document)
        (run / RUN_INDEX_NAME).write_text(json.dumps(document))

    return apply


def _duplicate(position: int) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["checkpoints"].append(copy.deepcopy(d["checkpoints"][position]))


def _set_entry(position: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["checkpoints"][position].__setitem__(key, value)


HOSTILE = [
    ("nested-100000-deep", lambda run: (run / RUN_INDEX_NAME).write_bytes(DEEP)),
    ("newest-listed-twice", _edit_index(_duplicate(2))),
    ("every-entry-listed-twice", _edit_index(lambda d: d["checkpoints"].extend(copy.deepcopy(d["checkpoints"])))),
    ("same-round-under-two-names", _edit_index(lambda d: d["checkpoints"].append(
        {**d["checkpoints"][2], "name": "checkpoint_000009"}))),
    ("oldest-claims-the-best-loss", _edit_index(_set_entry(0, "metrics", {"epoch": 0, "loss": 0.0}))),
    ("oldest-claims-another-round", _edit_index(_set_entry(0, "round", 7))),
    ("oldest-claims-another-size", _edit_index(_set_entry(0, "size", 1))),
    ("unknown-top-level-field", _edit_index(lambda d: d.__setitem__("keep_forever", ["checkpoint_000000"]))),
    ("unknown-entry-field", _edit_index(_set_entry(1, "pinned", True))),
    ("writer-version-a-list", _edit_index(lambda d: d.__setitem__("trainkeep_version", [0, 1]))),
    ("corrupt-mark-a-number", _edit_index(_set_entry(1, "corrupt", 1))),
]


@pytest.mark.parametrize(("case", "damage"), HOSTILE, ids=[case for case, _ in HOSTILE])
def test_a_hostile_index_is_rebuilt_before_retention_and_keeps_what_the_policy_keeps(
        run: Path, case: str, damage: Callable[[Path], None], caplog: pytest.LogCaptureFixture) -> None:
    damage(run)
    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        state = read_run(LocalStorage(), str(run))
        assert [c.name for c in state.index.checkpoints] == [OLDEST, h.PREVIOUS, h.NEWEST]
        assert state.problems and any("rebuil" in r.getMessage() for r in caplog.records)
        rows = CliRunner().invoke(cli, ["ls", str(run), "--json"])
        assert rows.exit_code == 0 and [r["name"] for r in json.loads(rows.stdout)] == [OLDEST, h.PREVIOUS,
                                                                                        h.NEWEST]
        assert tk.Result.from_path(run).checkpoint is not None
        with tk.CheckpointManager(run, KEEP_TWO) as manager:  # retention runs at close(): keeps 1/2 and 1/3
            assert len(manager.checkpoints) == 3
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint_")) == [h.PREVIOUS, h.NEWEST]
    index = parse_run_index((run / RUN_INDEX_NAME).read_bytes(), RUN_INDEX_NAME)  # written back exactly valid
    assert [(c.name, c.round, c.metrics["loss"]) for c in index.checkpoints] == [(h.PREVIOUS, 1, 0.5),
                                                                                 (h.NEWEST, 2, 1 / 3)]


def test_a_deeply_nested_manifest_is_a_verify_problem_not_a_crash(run: Path) -> None:
    (run / h.PREVIOUS / MANIFEST_NAME).write_bytes(DEEP)
    problems = verify_checkpoint(LocalStorage(), str(run), h.PREVIOUS)
    assert [p.reason for p in problems] == ["not valid JSON (nested too deeply)"]
    code, rows, _ = h.verify_cli(str(run))
    assert code == 1 and [row["ok"] for row in rows] == [True, False, True]


def test_a_deeply_nested_history_line_ends_the_history_like_a_torn_line(run: Path) -> None:
    with open(run / "history.jsonl", "ab") as f:
        f.write(DEEP + b"\n")
    assert [row["round"] for row in read_run(LocalStorage(), str(run)).history] == [0, 1, 2]
