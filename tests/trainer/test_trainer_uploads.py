"""Upload modes (SYNC, ASYNC, NO_UPLOAD, mixed per rank) and the deletion of local sources, with real workers."""

from __future__ import annotations

import json
import os
import threading

import pytest
import trainer_loops as loops
from trainer_loops import read_log

import trainkeep as tk
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep._internal.trainer.uploader import AsyncUploader


def fit(config, run_config, fn=loops.train, workers=2):
    return tk.DataParallelTrainer(fn, train_loop_config=config, scaling_config=tk.ScalingConfig(num_workers=workers),
                                  run_config=run_config).fit()


def files_of(run_path, name):
    manifest = json.load(open(os.path.join(run_path, name, ".trainkeep_manifest.json")))
    assert verify_checkpoint(LocalStorage(), run_path, name) == []
    return [f["path"] for f in manifest["files"]]


def latest_seen(config, rank):
    return [line.split("latest=")[1].split()[0] for line in read_log(config["log"]) if f"reported rank={rank}" in line]


def test_sync_files_from_rank_1_only_are_every_rank_s_latest_checkpoint(loop_config, make_run):
    loop_config.update(ckpt_ranks=[1])
    result = fit(loop_config, make_run())
    assert files_of(result.path, "checkpoint_000002") == ["shard_1.txt"]
    assert latest_seen(loop_config, 0) == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    assert sorted(os.listdir(loop_config["tmp"])) != []  # SYNC keeps the local sources by default


def test_async_uploads_all_land_and_their_local_sources_are_deleted(loop_config, make_run):
    loop_config.update(ckpt_ranks=[0, 1], epochs=4, modes={"0": "ASYNC", "1": "ASYNC"})
    result = fit(loop_config, make_run())

    assert [os.path.basename(c.path) for c, _ in result.best_checkpoints] == [f"checkpoint_00000{i}" for i in range(4)]
    for i in range(4):
        assert files_of(result.path, f"checkpoint_00000{i}") == ["shard_0.txt", "shard_1.txt", "state.json"]
    assert os.listdir(loop_config["tmp"]) == []  # ASYNC deletes the sources after the upload by default
    order = {None: -1, **{f"checkpoint_00000{i}": i for i in range(4)}}
    for rank in (0, 1):  # get_checkpoint() after an ASYNC report: the newest committed, never going back
        seen = [order[name if name != "None" else None] for name in latest_seen(loop_config, rank)]
        assert seen == sorted(seen)


def test_modes_may_differ_per_rank_and_delete_follows_each_rank_s_mode(loop_config, make_run):
    loop_config.update(ckpt_ranks=[0, 1], modes={"0": "SYNC", "1": "ASYNC"})
    result = fit(loop_config, make_run())
    for i in range(3):
        assert files_of(result.path, f"checkpoint_00000{i}") == ["shard_0.txt", "shard_1.txt", "state.json"]
    sources = sorted(name.split("_")[1] for name in os.listdir(loop_config["tmp"]))
    assert sources == ["r0", "r0", "r0"]  # rank 0 (SYNC) kept its sources, rank 1 (ASYNC) did not
    assert latest_seen(loop_config, 0) == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]


def test_explicit_delete_flags_override_the_mode_defaults(loop_config, make_run):
    loop_config.update(ckpt_ranks=[0, 1], epochs=2, modes={"0": "SYNC", "1": "ASYNC"}, delete={"0": True, "1": False})
    fit(loop_config, make_run())
    assert sorted(name.split("_")[1] for name in os.listdir(loop_config["tmp"])) == ["r1", "r1"]


def test_a_failed_async_upload_fails_the_run(loop_config, make_run, list_checkpoint_dirs):
    with pytest.raises(tk.TrainingFailedError) as info:
        fit(loop_config, make_run(), fn=loops.broken_async)
    assert isinstance(info.value.worker_failures[1], OSError)
    assert "unreadable" in str(info.value)
    assert list_checkpoint_dirs(os.path.join(make_run().storage_path, "run")) == []


def test_no_upload_registers_files_written_in_place_by_every_rank(loop_config, make_run):
    result = fit(loop_config, make_run(), fn=loops.in_place)
    for epoch in range(3):
        assert files_of(result.path, f"ckpt_{epoch}") == ["shard_0.txt", "shard_1.txt"]
    assert latest_seen(loop_config, 1) == ["ckpt_0", "ckpt_1", "ckpt_2"]


def test_no_upload_and_sync_mixed_in_one_round(loop_config, make_run):
    loop_config.update(modes={"0": "SYNC", "1": "NO_UPLOAD"})
    result = fit(loop_config, make_run(), fn=loops.in_place)
    for epoch in range(3):
        assert files_of(result.path, f"ckpt_{epoch}") == ["shard_0.txt", "shard_1.txt", "state.json"]


def test_no_upload_outside_the_run_directory_is_a_value_error(loop_config, make_run, tmp_path):
    loop_config.update(target=str(tmp_path / "elsewhere"))
    run = make_run(failure_config=tk.FailureConfig(max_failures=2))
    with pytest.raises(ValueError, match="NO_UPLOAD needs a checkpoint directly inside the run directory"):
        fit(loop_config, run, fn=loops.in_place)


def test_deleting_a_source_that_holds_the_run_directory_is_refused(loop_config, make_run, storage):
    loop_config.update(source=os.path.dirname(storage), delete=True)
    with pytest.raises(ValueError, match="holds a trainkeep run"):  # the scan refuses it first (issue 14.4)
        fit(loop_config, make_run(), fn=loops.report_dir, workers=1)
    assert os.path.isdir(os.path.join(storage, "run"))


# ---------------------------------------------------------------------------------------------- the uploader


def test_the_uploader_holds_two_uploads_in_flight_and_blocks_the_third():
    release, started, done = threading.Event(), [], []

    def upload(job):
        started.append(job)
        release.wait(30)
        done.append(job)

    uploader = AsyncUploader(upload, on_failure=lambda exc: None)
    uploader.submit(1)
    uploader.submit(2)
    third = threading.Thread(target=uploader.submit, args=(3,))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # blocked: two are in flight
    release.set()
    third.join(30)
    uploader.close()
    assert done == [1, 2, 3]


def test_an_upload_error_is_reported_at_once_then_raised_by_the_next_submit_and_by_close():
    failures = []

    def upload(job):
        if job == 1:
            raise OSError("disk full")

    uploader = AsyncUploader(upload, on_failure=failures.append)
    uploader.submit(1)
    with pytest.raises(OSError, match="disk full"):
        for job in range(2, 100):  # the failure arrives while we keep submitting
            uploader.submit(job)
    with pytest.raises(OSError, match="disk full"):
        uploader.close()
    assert [str(f) for f in failures] == ["disk full"]


def test_no_upload_files_are_fsynced_before_their_manifest(loop_config, make_run, tmp_path):
    """A NO_UPLOAD file lies in the run unsynced (the loop wrote it): the driver must fsync it before the manifest."""
    from trainkeep.testing.injection import Faults, inject

    log = tmp_path / "driver_ops.log"
    loop_config.update(epochs=2)
    trainer = tk.DataParallelTrainer(loops.in_place, train_loop_config=loop_config,
                                     scaling_config=tk.ScalingConfig(num_workers=2), run_config=make_run())
    result = inject(trainer, Faults(role="driver", log=str(log))).fit()
    ops = [line.split(maxsplit=3)[1:] for line in log.read_text().splitlines()]  # [level, name, path]
    for epoch in range(2):
        ckpt = os.path.join(result.path, f"ckpt_{epoch}")
        manifest_at = next(i for i, (level, name, path) in enumerate(ops)
                           if level == "syscall" and name == "rename" and path.startswith(ckpt + "/"))
        for rank in (0, 1):
            shard = os.path.join(ckpt, f"shard_{rank}.txt")
            synced = [i for i, (level, name, path) in enumerate(ops) if name == "fsync_file" and path == shard]
            assert synced and synced[0] < manifest_at, f"{shard} not fsynced before its manifest"
