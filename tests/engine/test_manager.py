"""CheckpointManager on the real filesystem: commit, retention, reopen and resume, refusal of bad input, the
single-writer lock (with a real child process SIGKILLed), and repair of what interrupted runs leave behind."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import trainkeep as tk
from trainkeep._internal.core.layout import HISTORY_NAME, INTERNAL_DIR, MANIFEST_NAME, RUN_INDEX_NAME
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage

MakeSource = Callable[..., tk.Checkpoint]


def _on_storage(run_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(run_dir) if os.path.isfile(os.path.join(run_dir, n, MANIFEST_NAME)))


def _history_rounds(run_dir: str) -> list[int]:
    with open(os.path.join(run_dir, HISTORY_NAME), "rb") as f:
        return [json.loads(line)["round"] for line in f]


def _index(run_dir: str) -> dict[str, Any]:
    with open(os.path.join(run_dir, RUN_INDEX_NAME)) as f:
        return json.load(f)


def _report(manager: tk.CheckpointManager, make_source: MakeSource, metrics: dict[str, Any],
            name: str | None = None, payload: bytes | None = None) -> tk.Checkpoint | None:
    files = {"model.bin": payload or json.dumps(metrics).encode(), "sub/dir/optim.bin": b"o" * 3000}
    return manager.report(metrics, make_source(files), checkpoint_dir_name=name)


# ------------------------------------------------------------------------------------------------ the main path


def test_report_commit_retention_reopen_resume(run_dir: str, make_source: MakeSource) -> None:
    config = tk.CheckpointConfig(2, "val_loss", "min")
    with tk.CheckpointManager(run_dir, config) as manager:
        for epoch, loss in enumerate([5.0, 3.0, 4.0, 1.0, 2.0]):
            committed = _report(manager, make_source, {"epoch": epoch, "val_loss": loss})
            assert committed == manager.latest_checkpoint
            manager.report({"epoch": epoch, "train_only": True})  # a metrics-only round in between
        assert committed is not None and committed.path == os.path.join(run_dir, "checkpoint_000008")
    # rounds 0,2,4,6,8 had checkpoints with losses 5,3,4,1,2: keep the best two (1 and 2); 2 is also the latest.
    assert _on_storage(run_dir) == ["checkpoint_000006", "checkpoint_000008"]
    assert _history_rounds(run_dir) == list(range(10))
    assert _index(run_dir)["status"] == "finished"

    with tk.CheckpointManager(run_dir, config) as manager:
        assert manager.next_round == 10
        assert [c.path for c, _ in manager.checkpoints] == [os.path.join(run_dir, n) for n in _on_storage(run_dir)]
        resume = manager.resume_checkpoint()
        assert resume == tk.Checkpoint(os.path.join(run_dir, "checkpoint_000008"))
        with resume.as_directory() as d:
            assert json.loads(Path(d, "model.bin").read_bytes()) == {"epoch": 4, "val_loss": 2.0}
            assert Path(d, "sub/dir/optim.bin").read_bytes() == b"o" * 3000
        assert [row["round"] for row in manager.history] == list(range(10))
        _report(manager, make_source, {"epoch": 5, "val_loss": 0.5})
        assert [m["val_loss"] for _, m in manager.best_checkpoints] == [1.0, 0.5]
    assert _on_storage(run_dir) == ["checkpoint_000006", "checkpoint_000010"]
    assert _history_rounds(run_dir) == list(range(11))
    assert all(verify_checkpoint(LocalStorage(), run_dir, n) == [] for n in _on_storage(run_dir))


def test_retention_without_score_keeps_the_newest(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=2)) as manager:
        for epoch in range(5):
            _report(manager, make_source, {"epoch": epoch})
            assert len(_on_storage(run_dir)) == min(epoch + 1, 2)
        assert [m["epoch"] for _, m in manager.best_checkpoints] == [3, 4]
    assert _on_storage(run_dir) == ["checkpoint_000003", "checkpoint_000004"]


def test_keep_all_by_default(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        for epoch in range(4):
            _report(manager, make_source, {"epoch": epoch})
    assert len(_on_storage(run_dir)) == 4


def test_latest_is_kept_even_when_it_is_the_worst(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(1, "acc", "max")) as manager:
        for acc in [0.5, 0.9, 0.1]:
            _report(manager, make_source, {"acc": acc})
        decision = manager.retention_decision()
        assert decision.reasons["checkpoint_000002"].startswith("latest (never deleted)")
        assert [m["acc"] for _, m in manager.best_checkpoints] == [0.9]
    assert _on_storage(run_dir) == ["checkpoint_000001", "checkpoint_000002"]


@pytest.mark.parametrize("order", ["max", "min"])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_missing_and_nan_scores_rank_last_in_both_orders(run_dir: str, make_source: MakeSource, order: str,
                                                        bad: float | None) -> None:
    config = tk.CheckpointConfig(1, "val/score", order)
    with tk.CheckpointManager(run_dir, config) as manager:
        _report(manager, make_source, {"val": {"score": 7.0}})
        _report(manager, make_source, {"val": {} if bad is None else {"score": bad}})
        _report(manager, make_source, {"epoch": 2})  # missing: kept only as the latest
        _report(manager, make_source, {"val": {"score": 7.0}})  # a tie with round 0: the older one goes
    assert _on_storage(run_dir) == ["checkpoint_000003"]


# ------------------------------------------------------------------------------------------------ bad input


def _bad_reports(make_source: MakeSource) -> list[tuple[dict[str, Any], tk.Checkpoint | None, str | None, type]]:
    ckpt = make_source({"model.bin": b"x" * 1000})
    return [
        ({"val_loss": "0.3"}, ckpt, None, tk.ScoreTypeError),
        ({"val_loss": None}, ckpt, None, tk.ScoreTypeError),
        ({"val_loss": True}, None, None, tk.ScoreTypeError),
        ({"val_loss": [0.1]}, ckpt, None, tk.ScoreTypeError),
        ({"val_loss": {"a": 0.1}}, ckpt, None, tk.ScoreTypeError),
        ({"val_loss": torch.tensor(0.1)}, ckpt, None, tk.InvalidMetricsError),
        ({"val_loss": 0.1, 3: "x"}, ckpt, None, tk.InvalidMetricsError),
        ({"val_loss": 0.1}, ckpt, "../escape", tk.InvalidCheckpointNameError),
        ({"val_loss": 0.1}, ckpt, "checkpoint_000000", tk.CheckpointExistsError),
        ({"val_loss": 0.1}, "not a checkpoint", None, TypeError),  # type: ignore[list-item]
    ]


def test_bad_reports_raise_before_any_write(run_dir: str, make_source: MakeSource,
                                            snapshot: Callable[[str], dict]) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(2, "val_loss", "min")) as manager:
        _report(manager, make_source, {"val_loss": 1.0})
        manager.report({"val_loss": 2.0})
        before, next_round = snapshot(run_dir), manager.next_round
        for metrics, ckpt, name, error in _bad_reports(make_source):
            with pytest.raises(error) as exc:
                manager.report(metrics, ckpt, checkpoint_dir_name=name)
            assert isinstance(exc.value, TypeError | ValueError | FileExistsError)
            assert snapshot(run_dir) == before, f"{error.__name__} left a trace on storage"
        assert manager.next_round == next_round
        assert _report(manager, make_source, {"val_loss": 0.5}) is not None  # still usable afterwards
    assert _history_rounds(run_dir) == [0, 1, 2]


def test_score_type_error_names_the_attribute_and_value(run_dir: str) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(1, "val_loss", "min")) as manager:
        with pytest.raises(TypeError, match=r"checkpoint_score_attribute 'val_loss'.*'0\.3' \(str\)"):
            manager.report({"val_loss": "0.3"})


def test_reused_checkpoint_dir_name_is_refused_and_nothing_is_deleted(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        _report(manager, make_source, {"epoch": 0}, name="best", payload=b"first")
        with pytest.raises(tk.CheckpointExistsError, match="'best' is already a committed checkpoint"):
            _report(manager, make_source, {"epoch": 1}, name="best", payload=b"second")
        assert Path(run_dir, "best", "model.bin").read_bytes() == b"first"
        assert _on_storage(run_dir) == ["best"]
    with tk.CheckpointManager(run_dir) as manager:  # also across sessions
        with pytest.raises(FileExistsError):
            _report(manager, make_source, {"epoch": 1}, name="best")
    assert Path(run_dir, "best", "model.bin").read_bytes() == b"first"


def test_foreign_directory_blocks_its_name_and_is_left_alone(run_dir: str, make_source: MakeSource) -> None:
    foreign = Path(run_dir, "checkpoint_000000")
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with tk.CheckpointManager(run_dir) as manager:
        with pytest.raises(tk.CheckpointExistsError, match="is not a checkpoint of this run"):
            _report(manager, make_source, {"epoch": 0})
        _report(manager, make_source, {"epoch": 0}, name="epoch_0")
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(os.listdir(foreign)) == ["notes.txt"]


def test_closed_manager_refuses_reports(run_dir: str) -> None:
    manager = tk.CheckpointManager(run_dir)
    manager.close()
    with pytest.raises(tk.TrainkeepError, match="closed"):
        manager.report({"a": 1})


# ------------------------------------------------------------------------------------------------ single writer

_HOLDER = textwrap.dedent("""
    import sys, time
    import trainkeep as tk
    manager = tk.CheckpointManager(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read()  # hold the run until the parent closes our stdin or kills us
""")


def test_second_manager_is_refused_until_the_first_closes(run_dir: str) -> None:
    first = tk.CheckpointManager(run_dir)
    with pytest.raises(tk.RunLockedError) as exc:
        tk.CheckpointManager(run_dir)
    assert f"pid {os.getpid()}" in str(exc.value) and run_dir in str(exc.value)
    assert isinstance(exc.value, RuntimeError) and exc.value.holder["pid"] == os.getpid()
    first.close()
    with tk.CheckpointManager(run_dir) as second:
        assert second.next_round == 0


def test_a_sigkilled_holder_is_named_and_then_taken_over(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        _report(manager, make_source, {"epoch": 0})
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, run_dir], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(tk.RunLockedError, match=f"held by pid {child.pid} on host"):
            tk.CheckpointManager(run_dir)
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    with tk.CheckpointManager(run_dir) as manager:
        assert [c.path for c, _ in manager.checkpoints] == [os.path.join(run_dir, "checkpoint_000000")]
        _report(manager, make_source, {"epoch": 1})
    assert _on_storage(run_dir) == ["checkpoint_000000", "checkpoint_000001"]


# ------------------------------------------------------------------------------------------------ repair on open


def test_interrupted_report_debris_is_swept_but_foreign_files_stay(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        _report(manager, make_source, {"epoch": 0})
        staged = manager.stage("checkpoint_000001").path  # an interrupted report: intent + directory, no manifest
        Path(staged, "half.bin").write_bytes(b"h" * 100)
    ours_tmp = Path(run_dir, f"{RUN_INDEX_NAME}.0badc0de.trainkeep_tmp")
    ours_tmp.write_bytes(b"{")
    Path(run_dir, "my_notes").mkdir()
    Path(run_dir, "my_notes", "n.txt").write_text("keep me")
    Path(run_dir, "checkpoint_000005").mkdir()  # user-made, no intent: not ours
    Path(run_dir, "data.trainkeep_tmp").write_text("a user file with our suffix")
    with tk.CheckpointManager(run_dir) as manager:
        assert not Path(staged).exists() and not ours_tmp.exists()
        assert os.listdir(Path(run_dir, INTERNAL_DIR)) == ["lock"]
        assert Path(run_dir, "my_notes", "n.txt").read_text() == "keep me"
        assert Path(run_dir, "checkpoint_000005").is_dir()
        assert Path(run_dir, "data.trainkeep_tmp").read_text() == "a user file with our suffix"
        assert [c.path for c, _ in manager.checkpoints] == [os.path.join(run_dir, "checkpoint_000000")]
        assert _report(manager, make_source, {"epoch": 1}) is not None


def test_torn_last_history_line_is_repaired(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        _report(manager, make_source, {"epoch": 0})
        manager.report({"epoch": 1})
    history = Path(run_dir, HISTORY_NAME)
    good = history.read_bytes()
    history.write_bytes(good + b'{"round":2,"time":1.0,"metr')
    with tk.CheckpointManager(run_dir) as manager:
        assert history.read_bytes() == good
        assert manager.next_round == 2
        manager.report({"epoch": 2})
    assert _history_rounds(run_dir) == [0, 1, 2]


def test_corrupt_or_missing_index_is_rebuilt_from_manifests(run_dir: str, make_source: MakeSource,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    config = tk.CheckpointConfig(2, "loss", "min")
    with tk.CheckpointManager(run_dir, config) as manager:
        for loss in [3.0, 1.0, 2.0]:
            _report(manager, make_source, {"loss": loss})
        manager.report({"loss": 9.0})
        expected = [(c.path, m) for c, m in manager.checkpoints]
    for damage in (b"\x00garbage", None):
        index = Path(run_dir, RUN_INDEX_NAME)
        if damage is None:
            index.unlink()
        else:
            index.write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger="trainkeep"), tk.CheckpointManager(run_dir, config) as manager:
            assert [(c.path, m) for c, m in manager.checkpoints] == expected
            assert manager.next_round == 4
            assert [m["loss"] for _, m in manager.best_checkpoints] == [2.0, 1.0]
        assert _index(run_dir)["checkpoint_config"] == config.to_dict()
    assert "corrupt" in caplog.text


def test_manifest_written_but_index_not_updated_is_reconciled(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(None, "loss", "min")) as manager:
        _report(manager, make_source, {"loss": 2.0})
        old_index = Path(run_dir, RUN_INDEX_NAME).read_bytes()
        old_history = Path(run_dir, HISTORY_NAME).read_bytes()
        _report(manager, make_source, {"loss": 1.0})
    Path(run_dir, RUN_INDEX_NAME).write_bytes(old_index)  # as if the process died right after the manifest
    Path(run_dir, HISTORY_NAME).write_bytes(old_history)
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(None, "loss", "min")) as manager:
        assert [m["loss"] for _, m in manager.checkpoints] == [2.0, 1.0]
        assert manager.next_round == 2
        assert [(row["round"], row["checkpoint"]) for row in manager.history] == [(0, "checkpoint_000000"),
                                                                                (1, "checkpoint_000001")]
        assert manager.best_checkpoints[-1][0].path.endswith("checkpoint_000001")
    assert [e["name"] for e in _index(run_dir)["checkpoints"]] == ["checkpoint_000000", "checkpoint_000001"]
    assert _history_rounds(run_dir) == [0, 1]


def test_index_entry_without_manifest_is_dropped_not_fatal(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        _report(manager, make_source, {"epoch": 0})
        _report(manager, make_source, {"epoch": 1})
    os.unlink(Path(run_dir, "checkpoint_000001", MANIFEST_NAME))  # a user damaged it
    with tk.CheckpointManager(run_dir) as manager:
        assert [c.path for c, _ in manager.checkpoints] == [os.path.join(run_dir, "checkpoint_000000")]
        assert manager.next_round == 2
    assert Path(run_dir, "checkpoint_000001", "model.bin").exists()  # its files are left alone


def test_resume_skips_a_corrupt_checkpoint_and_deletes_nothing(run_dir: str, make_source: MakeSource,
                                                              snapshot: Callable[[str], dict],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        for epoch in range(3):
            _report(manager, make_source, {"epoch": epoch}, payload=bytes([epoch]) * 4096)
    victim = Path(run_dir, "checkpoint_000002", "model.bin")
    data = bytearray(victim.read_bytes())
    data[1234] ^= 0x01  # one flipped bit, same size
    victim.write_bytes(bytes(data))
    with tk.CheckpointManager(run_dir) as manager:
        before = snapshot(run_dir)
        with caplog.at_level(logging.WARNING, logger="trainkeep"):
            resume = manager.resume_checkpoint()
        assert resume is not None and resume.path == os.path.join(run_dir, "checkpoint_000001")
        after = snapshot(run_dir)  # only the corrupt mark is written: the index entry and its marker file
        assert {k: v for k, v in after.items() if k.startswith("checkpoint_")} == {
            k: v for k, v in before.items() if k.startswith("checkpoint_")}
        assert len(manager.checkpoints) == 3
    assert "checkpoint_000002 does not verify" in caplog.text and "checksum" in caplog.text
    assert victim.read_bytes() == bytes(data)


def test_resume_with_no_checkpoint_or_all_corrupt_is_none(run_dir: str, make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        assert manager.resume_checkpoint() is None
        _report(manager, make_source, {"epoch": 0})
        os.unlink(Path(run_dir, "checkpoint_000000", "sub", "dir", "optim.bin"))
        assert manager.resume_checkpoint() is None


# ------------------------------------------------------------------------------------------------ prune


def test_prune_dry_run_then_real(run_dir: str, make_source: MakeSource, snapshot: Callable[[str], dict]) -> None:
    config = tk.CheckpointConfig(None, "acc", "max")
    with tk.CheckpointManager(run_dir, config) as manager:
        for acc in [0.2, 0.8, 0.5, 0.9, 0.1]:
            _report(manager, make_source, {"acc": acc})
        stricter = tk.CheckpointConfig(1, "acc", "max")
        before = snapshot(run_dir)
        planned = manager.prune(stricter, dry_run=True)
        assert snapshot(run_dir) == before
        assert [r.name for r in planned.delete] == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
        done = manager.prune(stricter)
        assert [r.name for r in done.delete] == [r.name for r in planned.delete]
        assert _on_storage(run_dir) == ["checkpoint_000003", "checkpoint_000004"]
        assert _index(run_dir)["checkpoint_config"] == config.to_dict()
        assert manager.config == config
        _report(manager, make_source, {"acc": 0.3})  # the run's own config (keep all) applies again
    assert _on_storage(run_dir) == ["checkpoint_000003", "checkpoint_000004", "checkpoint_000005"]
    assert [e["name"] for e in _index(run_dir)["checkpoints"]] == _on_storage(run_dir)


# ------------------------------------------------------------------------------------------------ edge cases


def test_a_failed_copy_leaves_the_run_as_it_was(run_dir: str, make_source: MakeSource,
                                                snapshot: Callable[[str], dict]) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        _report(manager, make_source, {"epoch": 0})
        broken = make_source({"model.bin": b"m", "sub/a.bin": b"a"})
        # reading /proc/self/mem at offset 0 fails with EIO: a copy that fails after the scan accepted the file
        os.symlink("/proc/self/mem", os.path.join(broken.path, "sub", "unreadable.bin"))
        before, next_round = snapshot(run_dir), manager.next_round
        with pytest.raises(OSError):
            manager.report({"epoch": 1}, broken)
        assert snapshot(run_dir) == before  # nothing new visible, nothing old deleted, no debris
        assert manager.next_round == next_round
        assert _report(manager, make_source, {"epoch": 1}) is not None  # the same round and name, retried
    assert _on_storage(run_dir) == ["checkpoint_000001"]
    assert _history_rounds(run_dir) == [0, 1]


def test_reporting_a_committed_checkpoint_again_copies_user_files_only(tmp_path: Path, make_source: MakeSource) -> None:
    with tk.CheckpointManager(str(tmp_path / "first")) as manager:
        old = _report(manager, make_source, {"epoch": 0})
    assert old is not None
    old.set_metadata({"epoch": 0})
    with tk.CheckpointManager(str(tmp_path / "second")) as manager:
        new = manager.report({"epoch": 1}, old)
        assert new is not None and manager.resume_checkpoint() == new
        assert new.get_metadata() == {"epoch": 0}
        assert {f.path for f in manager.manifest("checkpoint_000000").files} == {
            "model.bin", "sub/dir/optim.bin", ".metadata.json"}
        assert json.loads(Path(new.path, MANIFEST_NAME).read_text())["metrics"] == {"epoch": 1}


def test_a_file_where_the_run_should_be_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("not a directory")
    with pytest.raises(tk.StorageError, match="exists and is a file"):
        tk.CheckpointManager(str(path))
    assert path.read_text() == "not a directory"


def test_protected_checkpoint_survives_retention_until_close(run_dir: str, make_source: MakeSource) -> None:
    """A checkpoint a worker group runs from outlives its rank, and is deleted once the run closes."""
    config = tk.CheckpointConfig(num_to_keep=1)
    with tk.CheckpointManager(run_dir, config) as manager:
        manager.report({"step": 0}, make_source())
        manager.protected = {"checkpoint_000000"}
        manager.report({"step": 1}, make_source())
        manager.report({"step": 2}, make_source())
        assert _on_storage(run_dir) == ["checkpoint_000000", "checkpoint_000002"]
    assert _on_storage(run_dir) == ["checkpoint_000002"]
    assert [c["name"] for c in _index(run_dir)["checkpoints"]] == ["checkpoint_000002"]
