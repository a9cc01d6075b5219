"""The session functions outside a run, the trainer's argument checks, and lazy imports (no worker processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import trainkeep as tk


@pytest.mark.parametrize("call", [lambda: tk.report({"a": 1}), tk.get_checkpoint, tk.get_context])
def test_session_functions_outside_a_run_say_how_to_start_one(call):
    with pytest.raises(tk.SessionError, match=r"inside a training function .*DataParallelTrainer\(.*\)\.fit\(\)"):
        call()


@pytest.mark.parametrize(("field", "value"), [("checkpoint_frequency", 2), ("checkpoint_at_end", True)])
def test_a_function_trainer_refuses_checkpoint_timing_it_cannot_honour(field, value):
    config = tk.CheckpointConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field}={value}.*report a checkpoint from the loop instead"):
        tk.DataParallelTrainer(lambda: None, run_config=tk.RunConfig(checkpoint_config=config))


def test_checkpoint_at_end_false_and_frequency_zero_are_accepted():
    config = tk.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False)
    tk.DataParallelTrainer(lambda: None, run_config=tk.RunConfig(checkpoint_config=config))


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"train_loop_per_worker": 3}, TypeError, "must be a function, got 3"),
    ({"train_loop_config": [1]}, TypeError, "train_loop_config must be None or a dict, got list"),
    ({"scaling_config": {"num_workers": 2}}, TypeError, "scaling_config must be a trainkeep.ScalingConfig"),
    ({"run_config": "run"}, TypeError, "run_config must be a trainkeep.RunConfig, got 'run'"),
    ({"train_loop_per_worker": lambda a, b: None}, ValueError, "one argument .* or none"),
    ({"train_loop_per_worker": lambda: None, "train_loop_config": {}}, ValueError, "takes no argument"),
])
def test_bad_trainer_arguments_name_the_field_and_value(kwargs, error, words):
    args = {"train_loop_per_worker": lambda config: None, **kwargs}
    fn = args.pop("train_loop_per_worker")
    with pytest.raises(error, match=words):
        tk.DataParallelTrainer(fn, **args)


def test_an_unpicklable_training_function_fails_before_anything_is_written(tmp_path):
    import threading

    lock = threading.Lock()
    run = tk.RunConfig(name="run", storage_path=str(tmp_path / "storage"))
    with pytest.raises(TypeError, match="must be picklable with cloudpickle"):
        tk.DataParallelTrainer(lambda: lock.acquire(), run_config=run).fit()
    assert not (tmp_path / "storage").exists()


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_trainkeep_does_not_import_torch_and_tk_torch_loads_it_lazily():
    out = _python("import sys, trainkeep as tk\n"
                  "assert 'torch' not in sys.modules\n"
                  "assert 'trainkeep.torch' not in sys.modules\n"
                  "print(tk.torch.TorchTrainer.__name__, 'torch' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TorchTrainer", "False"]  # the trainer class itself needs no torch either


def test_without_torch_the_torch_trainer_says_how_to_install_it():
    out = _python("import sys; sys.modules['torch'] = None\n"
                  "import trainkeep as tk\n"
                  "try:\n"
                  "    tk.torch.TorchTrainer(lambda: None)\n"
                  "except ImportError as exc:\n"
                  "    print('IMPORTERROR', exc)\n")
    assert out.returncode == 0, out.stderr
    assert "IMPORTERROR trainkeep.torch needs PyTorch: pip install 'trainkeep[torch]'" in out.stdout
