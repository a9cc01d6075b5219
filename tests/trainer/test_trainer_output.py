"""What a user sees on stderr without configuring logging, and on Ctrl-C: real subprocesses, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = '''
import logging, os, sys, time
import trainkeep as tk

if sys.argv[2] == "configured":
    logging.basicConfig(level=logging.INFO, format="APP %(name)s: %(message)s")
ROOT = sys.argv[1]
marker = os.path.join(ROOT, "failed_once")

def train():
    start = tk.get_checkpoint()
    src = os.path.join(ROOT, "src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "state.txt"), "w") as f:
        f.write("x")
    tk.report({"loss": 1.0}, checkpoint=tk.Checkpoint.from_directory(src) if start is None else None)
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails\\nsecond line of the message")

config = tk.RunConfig(name="run", storage_path=os.path.join(ROOT, "runs"),
                      failure_config=tk.FailureConfig(max_failures=1))
tk.DataParallelTrainer(train, run_config=config).fit()
tk.DataParallelTrainer(train, run_config=config).fit()
print("done")
'''


def _run(tmp_path: Path, mode: str, **env: str) -> list[str]:
    (tmp_path / "script.py").write_text(SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k != "TRAINKEEP_LOG_LEVEL"}
    done = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(tmp_path), mode], capture_output=True,
                          text=True, timeout=120, env={**environ, **env})
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    return done.stderr.splitlines()


def test_resume_and_restart_lines_reach_stderr_without_logging_configured(tmp_path: Path) -> None:
    lines = _run(tmp_path, "plain")
    print("\n".join(lines))
    restarts = [line for line in lines if "restart 1 of 1" in line]
    assert restarts == [line for line in lines if "worker group failed" in line] and len(restarts) == 1
    assert restarts[0].startswith("trainkeep WARNING: worker group failed (RuntimeError: first attempt fails [...])")
    resumes = [line for line in lines if "resuming run" in line]
    assert len(resumes) == 1 and resumes[0].startswith("trainkeep INFO: resuming run ")
    assert "from checkpoint " in resumes[0]
    assert "second line" not in "\n".join(lines)


def test_trainkeep_log_level_adjusts_the_default_output(tmp_path: Path) -> None:
    lines = _run(tmp_path, "plain", TRAINKEEP_LOG_LEVEL="warning")
    assert not any("resuming run" in line for line in lines)
    assert len([line for line in lines if "restart 1 of 1" in line]) == 1


def test_an_application_that_configured_logging_gets_each_line_once_through_its_own_handler(tmp_path: Path) -> None:
    lines = _run(tmp_path, "configured")
    assert not any(line.startswith("trainkeep ") for line in lines)
    resumes = [line for line in lines if "resuming run" in line]
    assert len(resumes) == 1 and resumes[0].startswith("APP trainkeep._internal.trainer.data_parallel: resuming run")


INTERRUPTED = '''
import os, sys, time
import trainkeep as tk

ROOT = sys.argv[1]

def train():
    src = os.path.join(ROOT, "src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "state.txt"), "w") as f:
        f.write("x")
    rank0 = tk.get_context().get_world_rank() == 0
    tk.report({"epoch": 0}, checkpoint=tk.Checkpoint.from_directory(src) if rank0 else None)
    with open(os.path.join(ROOT, f"worker_{os.getpid()}"), "w") as f:
        f.write("reported")
    time.sleep(120)

tk.DataParallelTrainer(train, scaling_config=tk.ScalingConfig(num_workers=2),
                       run_config=tk.RunConfig(name="run", storage_path=os.path.join(ROOT, "runs"))).fit()
'''


def test_ctrl_c_in_fit_stops_cleanly_with_one_line_saying_what_was_committed(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(INTERRUPTED)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(tmp_path)], stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("worker_*"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = [int(p.name.split("_")[1]) for p in tmp_path.glob("worker_*")]
    assert len(workers) == 2, f"the workers never reported: {proc.poll()} {proc.stderr and proc.stderr.read()}"
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the driver (workers have their own session)
    _, stderr = proc.communicate(timeout=60)
    print(stderr)
    assert proc.returncode == 1  # an uncaught exception's status (Lightning exits 1 on Ctrl-C too)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    run = tmp_path / "runs" / "run"
    assert lines == [f"trainkeep: fit() interrupted (Ctrl-C): run {run} closed with 1 report round(s) committed, "
                     f"1 checkpoint(s) kept, the latest {run / 'checkpoint_000000'}; unfinished rounds were "
                     "discarded. fit() on the same run resumes from there."]
    for pid in workers:  # no worker outlives the driver's clean stop
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    import trainkeep as tk

    result = tk.Result.from_path(str(run))
    assert result.checkpoint is not None and result.checkpoint.path.endswith("checkpoint_000000")


FAILING = '''
import os, sys
import trainkeep as tk

class Model:
    def step(self, x):
        return (lambda y: 1 / y)(x)  # the line that fails

def make_train(scale):
    def train():
        Model().step(scale * 0)
    return train

try:
    tk.DataParallelTrainer(make_train(3), run_config=tk.RunConfig(name="run", storage_path=sys.argv[1])).fit()
except tk.TrainingFailedError as exc:
    print(exc.tracebacks[0])
'''


def test_a_worker_traceback_shows_the_user_s_own_frames_with_their_source_lines(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(FAILING)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    text = done.stdout
    print(text)
    assert done.returncode == 0 and "ZeroDivisionError: division by zero" in text, done.stderr
    assert "<dynamic-code>" not in text and "trainer/worker.py" not in text
    script = str(tmp_path / "script.py")
    for line, function, source in ((11, "train", "Model().step(scale * 0)"),
                                   (7, "step", "return (lambda y: 1 / y)(x)  # the line that fails"),
                                   (7, "<lambda>", None)):
        assert f'File "{script}", line {line}, in {function}' in text
        if source:
            assert source in text
