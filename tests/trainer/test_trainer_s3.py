"""A run on S3 (a real moto server on 127.0.0.1): workers upload straight to the bucket and resume from it."""

from __future__ import annotations

import json
import os

import trainer_loops as loops
from trainer_loops import read_log

import trainkeep as tk


def test_a_run_on_s3_commits_every_rank_s_files_and_resumes_after_a_failure(s3_fs, loop_config, tmp_path):
    # rank 0 (SYNC) fails at epoch 2, after round 1 committed; rank 1 (ASYNC) may be ahead: its round 2 is discarded
    loop_config.update(epochs=3, ckpt_ranks=[0, 1], modes={"1": "ASYNC"},
                       fail={"rank": 0, "epoch": 2, "how": "raise", "once": str(tmp_path / "failed")})
    storage_path = f"s3://{s3_fs.bucket_name}/runs"
    run = tk.RunConfig(name="run", storage_path=storage_path, storage_filesystem=s3_fs,
                       failure_config=tk.FailureConfig(max_failures=1),
                       checkpoint_config=tk.CheckpointConfig(num_to_keep=2))
    result = tk.DataParallelTrainer(loops.train, train_loop_config=loop_config, run_config=run,
                                    scaling_config=tk.ScalingConfig(num_workers=2)).fit()

    starts = [line for line in read_log(loop_config["log"]) if line.startswith("start rank=0")]
    assert starts == ["start rank=0 epoch=0 from=None", "start rank=0 epoch=2 from=checkpoint_000001"]
    assert result.path == f"{s3_fs.bucket_name}/runs/run"
    assert sorted(p.rsplit("/", 1)[1] for p in s3_fs.ls(result.path, refresh=True) if "checkpoint_" in p) == [
        "checkpoint_000001", "checkpoint_000002"]
    read_back = tk.Result.from_path(f"{storage_path}/run", storage_filesystem=s3_fs)
    assert read_back.metrics_dataframe["epoch"].tolist() == [0, 1, 2]
    assert read_back.checkpoint == result.checkpoint
    local = result.checkpoint.to_directory(str(tmp_path / "download"))
    assert sorted(os.listdir(local)) == ["shard_0.txt", "shard_1.txt", "state.json"]
    assert json.load(open(os.path.join(local, "state.json"))) == {"epoch": 2}
