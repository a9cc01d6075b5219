"""Trainable / TrainableTrainer: the exact iterations that get checkpoints, resume, and bad input."""

from __future__ import annotations

import json
import os

import pytest

import trainkeep as tk
from trainkeep._internal.trainer.trainable import (
    Trainable,
    TrainableTrainer,
    checkpoint_iterations,
    should_stop,
)


class Counter(Trainable):
    """Sums the iteration numbers; fails once at ``fail_at`` (a marker file makes it happen once)."""

    def setup(self, config):
        self.total = 0
        self.fail_at = config.get("fail_at")
        self.marker = config.get("marker")
        self.loaded_from = None

    def step(self):
        self.total += self.iteration
        if self.iteration == self.fail_at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError(f"injected failure at iteration {self.iteration}")
        return {"total": self.total, "loaded_from": self.loaded_from}

    def save_checkpoint(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "state.json"), "w") as f:
            json.dump({"total": self.total}, f)

    def load_checkpoint(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "state.json")) as f:
            self.total = json.load(f)["total"]
        self.loaded_from = self.iteration


def checkpointed_iterations(result: tk.Result) -> list[int]:
    return [row["metrics"]["training_iteration"] for row in result.history if row["checkpoint"]]


def fit(tmp_path, name, iterations, frequency, at_end, **config):
    run_config = tk.RunConfig(
        name=name, storage_path=str(tmp_path),
        checkpoint_config=tk.CheckpointConfig(checkpoint_frequency=frequency, checkpoint_at_end=at_end),
        failure_config=tk.FailureConfig(max_failures=1))
    trainer = TrainableTrainer(Counter, config=config, stop={"training_iteration": iterations},
                               run_config=run_config)
    return trainer.fit()


EXPECTED = {  # (iterations, frequency, checkpoint_at_end) -> iterations that get a checkpoint
    (10, 0, True): [10], (10, 0, False): [], (10, 0, None): [10],
    (10, 1, True): list(range(1, 11)), (10, 1, False): list(range(1, 11)), (10, 1, None): list(range(1, 11)),
    (10, 3, True): [3, 6, 9, 10], (10, 3, False): [3, 6, 9], (10, 3, None): [3, 6, 9, 10],
    (9, 0, True): [9], (9, 0, False): [], (9, 0, None): [9],
    (9, 1, True): list(range(1, 10)), (9, 1, False): list(range(1, 10)), (9, 1, None): list(range(1, 10)),
    (9, 3, True): [3, 6, 9], (9, 3, False): [3, 6, 9], (9, 3, None): [3, 6, 9],
}


@pytest.mark.parametrize(("iterations", "frequency", "at_end"), sorted(EXPECTED, key=str))
def test_schedule_function_matches_table(iterations, frequency, at_end):
    assert checkpoint_iterations(iterations, frequency, at_end) == EXPECTED[(iterations, frequency, at_end)]


@pytest.mark.parametrize("iterations", [10, 9])
def test_real_runs_checkpoint_exactly_the_expected_iterations(tmp_path, iterations):
    for frequency in (0, 1, 3):
        for at_end in (True, False, None):
            name = f"i{iterations}_f{frequency}_{at_end}"
            result = fit(tmp_path, name, iterations, frequency, at_end)
            expected = EXPECTED[(iterations, frequency, at_end)]
            assert checkpointed_iterations(result) == expected, name
            assert [row["metrics"]["training_iteration"] for row in result.history] == list(
                range(1, iterations + 1))
            assert result.metrics["total"] == iterations * (iterations + 1) // 2
            on_disk = sorted(n for n in os.listdir(tmp_path / name) if n.startswith("checkpoint_"))
            assert len(on_disk) == len(expected), name


def test_failure_resumes_from_checkpoint_and_continues_iteration_count(tmp_path):
    marker = str(tmp_path / "failed-once")
    result = fit(tmp_path, "resume", 10, 3, None, fail_at=5, marker=marker)
    assert os.path.exists(marker)
    iterations = [row["metrics"]["training_iteration"] for row in result.history]
    # iterations 1..4 ran, 5 failed (its round discarded); the restart loads iteration 3's checkpoint
    assert iterations == [1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10]
    assert result.history[4]["metrics"]["loaded_from"] == 3
    assert checkpointed_iterations(result) == [3, 6, 9, 10]
    assert result.metrics["total"] == 55  # the state came back from the checkpoint, not from zero


def test_second_fit_continues_the_iteration_count(tmp_path):
    first = fit(tmp_path, "again", 4, 2, None)
    assert checkpointed_iterations(first) == [2, 4]
    second = fit(tmp_path, "again", 7, 2, None)
    iterations = [row["metrics"]["training_iteration"] for row in second.history]
    assert iterations == [1, 2, 3, 4, 5, 6, 7]
    assert checkpointed_iterations(second) == [2, 4, 6, 7]
    assert second.metrics["total"] == 28


def test_stop_conditions():
    assert should_stop({"training_iteration": 3}, 3, {"training_iteration": 3})
    assert not should_stop({"training_iteration": 3}, 2, {"training_iteration": 2})
    assert should_stop({"acc": 0.9}, 1, {"acc": 0.95})
    assert should_stop(lambda i, m: i >= 2, 2, {})
    assert should_stop(None, 1, {"done": True})
    assert not should_stop(None, 1, {})


def test_bad_input_is_refused_at_construction(tmp_path):
    with pytest.raises(TypeError, match="subclass of trainkeep.Trainable"):
        TrainableTrainer(object)
    with pytest.raises(TypeError, match="stop must be"):
        TrainableTrainer(Counter, stop=[1, 2])
    with pytest.raises(ValueError, match="stop must map metric names to numbers"):
        TrainableTrainer(Counter, stop={"training_iteration": "ten"})


def test_function_trainer_refuses_frequency_and_at_end():
    config = tk.RunConfig(checkpoint_config=tk.CheckpointConfig(checkpoint_frequency=2))
    with pytest.raises(ValueError, match="report a checkpoint from the loop"):
        tk.DataParallelTrainer(lambda: None, run_config=config)
    config = tk.RunConfig(checkpoint_config=tk.CheckpointConfig(checkpoint_at_end=True))
    with pytest.raises(ValueError, match="report a checkpoint from the loop"):
        tk.DataParallelTrainer(lambda: None, run_config=config)
    tk.DataParallelTrainer(lambda: None, run_config=tk.RunConfig(
        checkpoint_config=tk.CheckpointConfig(checkpoint_at_end=False)))
