"""The ASYNC hand-over: report() announces the round and returns; the uploader thread learns where files go."""

from __future__ import annotations

import json
import os
import threading
from multiprocessing import Pipe

import async_loops
import pytest

import trainkeep as tk
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer.uploader import Inbox
from trainkeep.errors import SessionError


def test_an_async_report_returns_before_the_driver_says_where_its_files_go(loop_config, make_run):
    loop_config.update(wait_s=60)
    result = tk.DataParallelTrainer(async_loops.rank_1_runs_ahead, train_loop_config=loop_config,
                                    scaling_config=tk.ScalingConfig(num_workers=2), run_config=make_run()).fit()
    for epoch in range(2):  # both rounds committed whole, rank 1's files in each, rank 0's metrics
        manifest = json.load(open(os.path.join(result.path, f"checkpoint_00000{epoch}", ".trainkeep_manifest.json")))
        assert [f["path"] for f in manifest["files"]] == ["shard_1.txt"]
        assert manifest["metrics"]["epoch"] == epoch
    assert os.listdir(loop_config["tmp"]) == ["rank_1_ahead"]  # the ASYNC sources were handed over


def test_the_inbox_gives_each_round_its_dest_whatever_their_order_and_the_rest_to_the_training_thread():
    worker, driver = Pipe()
    inbox = Inbox(worker)
    driver.send(p.Dest("/run/b", None, 1))
    driver.send(p.Released("/run/a"))
    driver.send(p.Dest("/run/a", ["x"], 0))
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(inbox.dest(0)))
    waiter.start()
    waiter.join(30)
    assert got == [p.Dest("/run/a", ["x"], 0)]
    assert inbox.dest(1) == p.Dest("/run/b", None, 1)
    assert inbox.reply() == p.Released("/run/a")
    driver.close()
    with pytest.raises(SessionError, match="driver of this run is gone"):
        inbox.dest(2)
    with pytest.raises(SessionError, match="driver of this run is gone"):
        inbox.reply()


def test_a_session_that_reads_its_connection_itself_still_uploads_async(loop_config, make_run):
    result = tk.DataParallelTrainer(async_loops.async_without_background_receive, train_loop_config=loop_config,
                                    scaling_config=tk.ScalingConfig(num_workers=2), run_config=make_run()).fit()
    for epoch in range(3):
        manifest = json.load(open(os.path.join(result.path, f"checkpoint_00000{epoch}", ".trainkeep_manifest.json")))
        assert [f["path"] for f in manifest["files"]] == ["shard_0.txt", "shard_1.txt", "state.json"]
