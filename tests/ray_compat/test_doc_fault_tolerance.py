"""Port of ray-project/ray doc/source/train/doc_code/fault_tolerance.py (Ray 2.60), imports swapped to trainkeep.

The user guide doc/source/train/user-guides/fault-tolerance.rst shows these snippets: FailureConfig, worker
fault tolerance (restore from ``get_checkpoint()``, report a checkpoint, ``max_failures``), and job driver fault
tolerance (an entry point given ``--storage_path`` and ``--run_name`` that resumes when run again). The
preemption snippets use APIs trainkeep does not offer: pinned in test_doc_differences.py.

The page's trainer is a TorchTrainer with 4 workers whose loop uses no torch (the model lines are comments):
here a DataParallelTrainer with 2 workers runs the same loop, so that no worker pays for importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import trainkeep
import trainkeep as ray_train  # the page writes ray.train.X


def test_failure_config_examples():
    """__failure_config_start__: up to 2 retries; -1 for no limit."""
    assert ray_train.FailureConfig(max_failures=2).max_failures == 2
    assert ray_train.FailureConfig(max_failures=-1).max_failures == -1


def train_fn_per_worker(train_loop_config: dict):
    # [1] Train worker restoration logic.
    checkpoint = ray_train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as temp_checkpoint_dir:
            restored = Path(temp_checkpoint_dir, "state.json").read_text()
    else:
        restored = None
    # (the page's loop ends here; a crash on the first attempt shows the restore at work)
    crash_marker = train_loop_config.get("crash_once")
    if crash_marker and checkpoint and not os.path.exists(crash_marker):
        Path(crash_marker).touch()
        os._exit(1)
    # [2] Checkpoint saving and reporting logic.
    with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
        Path(temp_checkpoint_dir, "state.json").write_text(json.dumps({"restored": restored}))
        ray_train.report({"loss": 0.1, "restored": restored},
                         checkpoint=ray_train.Checkpoint.from_directory(temp_checkpoint_dir))


def test_worker_fault_tolerance_restores_from_the_latest_checkpoint(tmp_path):
    """__worker_fault_tolerance_start__: a worker that dies is restarted (max_failures=3) from the checkpoint."""
    run_config = ray_train.RunConfig(name=f"train_run-{uuid.uuid4().hex}", storage_path=str(tmp_path),
                                     failure_config=ray_train.FailureConfig(max_failures=3))
    first = trainkeep.DataParallelTrainer(train_fn_per_worker, scaling_config=ray_train.ScalingConfig(num_workers=2),
                                          run_config=run_config).fit()
    assert first.metrics == {"loss": 0.1, "restored": None}
    # the same (storage_path, name) again: the run resumes; its workers die once after restoring, and recover
    marker = str(tmp_path / "crashed")
    second = trainkeep.DataParallelTrainer(train_fn_per_worker, train_loop_config={"crash_once": marker},
                                           scaling_config=ray_train.ScalingConfig(num_workers=2),
                                           run_config=run_config).fit()
    assert os.path.exists(marker)
    assert second.metrics["restored"] == json.dumps({"restored": None})
    assert len(second.best_checkpoints) == 2


ENTRYPOINT = '''
import argparse
import json
import tempfile
from pathlib import Path

import trainkeep as ray_train


def train_fn_per_worker(train_loop_config: dict):
    # [1] Train worker restoration logic.
    checkpoint = ray_train.get_checkpoint()
    restored = None
    if checkpoint:
        with checkpoint.as_directory() as temp_checkpoint_dir:
            restored = json.loads(Path(temp_checkpoint_dir, "state.json").read_text())["attempt"]
    # [2] Checkpoint saving and reporting logic.
    with tempfile.TemporaryDirectory() as temp_checkpoint_dir:
        attempt = 0 if restored is None else restored + 1
        Path(temp_checkpoint_dir, "state.json").write_text(json.dumps({"attempt": attempt}))
        ray_train.report({"loss": 0.1, "attempt": attempt},
                         checkpoint=ray_train.Checkpoint.from_directory(temp_checkpoint_dir))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage_path", type=str, required=True)
    parser.add_argument("--run_name", type=str, required=True)
    args = parser.parse_args()

    trainer = ray_train.DataParallelTrainer(
        train_fn_per_worker,
        scaling_config=ray_train.ScalingConfig(num_workers=2),
        run_config=ray_train.RunConfig(
            # [3] Enable worker-level fault tolerance to gracefully handle
            # Train worker failures.
            failure_config=ray_train.FailureConfig(max_failures=3),
            # [4] (Recommendation) The (storage_path, name) pair should be
            # determined by the job submitter and passed in as arguments
            # to the entrypoint script.
            storage_path=args.storage_path,
            name=args.run_name,
        ),
    )
    print("ATTEMPT", trainer.fit().metrics["attempt"])
'''


def test_job_driver_fault_tolerance_resumes_a_rerun_entrypoint(tmp_path):
    """__job_driver_fault_tolerance_start__: the submitter runs the entry point again with the same
    (storage_path, run_name), and the new driver continues from the run's latest checkpoint."""
    script = tmp_path / "entrypoint.py"
    script.write_text(textwrap.dedent(ENTRYPOINT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, str(script), "--storage_path", str(tmp_path / "storage"), "--run_name", "job-1"]
    outputs = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    for out in outputs:
        assert out.returncode == 0, out.stderr
    assert [out.stdout.split()[-1] for out in outputs] == ["0", "1"]
