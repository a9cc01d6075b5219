"""``datasets=`` and ``get_dataset_shard()`` with the local executor: the split, the types, the errors, restarts.

The Ray executor's ``ray.data`` datasets are tested in tests/ray/test_ray_executor.py, on its cluster.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

import dataset_loops as loops
import numpy as np
import pandas as pd
import pytest
import torch

import trainkeep as tk
from trainkeep._internal.trainer import datasets

pytestmark = pytest.mark.timeout(120)


def _shards(log: str) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Return the logged shards by (attempt, dataset name), in rank order."""
    by: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with open(log) as f:
        for line in f:
            entry = json.loads(line)
            by.setdefault((entry["attempt"], entry["name"]), []).append(entry)
    return {key: sorted(entries, key=lambda e: e["rank"]) for key, entries in by.items()}


# ---------------------------------------------------------------------------------------------- the split


@pytest.mark.parametrize(("length", "world_size"), [(0, 1), (1, 3), (10, 3), (11, 4), (12, 4), (7, 1)])
def test_the_blocks_are_numpy_s_array_split(length: int, world_size: int) -> None:
    blocks = [list(range(length))[slice(*datasets.bounds(length, world_size, r))] for r in range(world_size)]
    assert blocks == [b.tolist() for b in np.array_split(np.arange(length), world_size)]


DATASETS = {
    "numpy": (lambda: np.arange(10), "ndarray"),
    "list": (lambda: list(range(11)), "list"),
    "tuple": (lambda: tuple(range(5)), "tuple"),
    "own": (lambda: loops.Squares(8), "IndexView"),
    "two": (lambda: [100, 101], "list"),  # fewer items than workers
    "empty": (lambda: np.zeros((0, 3)), "ndarray"),
}
HEAVY_DATASETS = {  # torch and pandas cost each worker seconds to import: one run has them, split unevenly
    "frame": (lambda: pd.DataFrame({"x": range(7), "y": [0.5] * 7}), "DataFrame"),
    "tensor": (lambda: torch.arange(9).reshape(9, 1), "Tensor"),
    "torch": (lambda: loops.torch_squares(7), "Subset"),
}


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_rank_gets_its_contiguous_block_of_every_dataset_in_a_natural_type(world_size, make_run,
                                                                                  loop_config) -> None:
    cases = {**DATASETS, **(HEAVY_DATASETS if world_size == 2 else {})}
    given = {name: make() for name, (make, _) in cases.items()}
    unsplit = {"val": [7, 8, 9], "val_own": loops.Squares(3)}  # DataConfig leaves them whole: every rank has all
    tk.DataParallelTrainer(loops.log_shards, train_loop_config={**loop_config, "names": [*cases, *unsplit]},
                           datasets={**given, **unsplit}, scaling_config=tk.ScalingConfig(num_workers=world_size),
                           dataset_config=tk.DataConfig(datasets_to_split=[*cases, "not_a_dataset"]),
                           run_config=make_run()).fit()

    shards = _shards(loop_config["log"])
    assert [e["rows"] for e in shards[(0, "val")]] == [[7, 8, 9]] * world_size
    assert [(e["type"], e["rows"]) for e in shards[(0, "val_own")]] == [("Squares", [0, 1, 4])] * world_size
    for name, (make, kind) in cases.items():
        per_rank = shards[(0, name)]
        assert [e["rank"] for e in per_rank] == list(range(world_size)), name
        assert {e["type"] for e in per_rank} == {kind}, name
        everything = [row for e in per_rank for row in e["rows"]]
        dataset = make()
        expected = loops._rows(dataset)
        assert everything == expected, name  # each item exactly once, in order
        sizes = [len(e["rows"]) for e in per_rank]
        assert sizes == [len(b) for b in np.array_split(np.arange(len(dataset)), world_size)], name


def test_a_worker_gets_only_its_slice_of_an_array_not_the_whole(make_run, loop_config) -> None:
    big = np.arange(1_000_000, dtype=np.int64)
    prepared = datasets.prepare({"big": big}, 4)
    assert prepared.whole == {}
    assert all(len(packed or b"") < big.nbytes / 4 + 1000 for packed in prepared.per_rank)  # a quarter each


def test_an_index_view_is_a_lazy_sequence_that_slices_into_views() -> None:
    view = datasets.view_of(loops.Squares(10), 2, 8)
    assert isinstance(view, datasets.IndexView)
    assert len(view) == 6 and view[0] == 4 and view[-1] == 49 and list(view) == [i * i for i in range(2, 8)]
    assert list(view[1:5:2]) == [9, 25] and isinstance(view[1:5], datasets.IndexView)
    with pytest.raises(IndexError):
        view[6]


def test_a_restart_hands_every_rank_the_same_fresh_shards(make_run, loop_config, tmp_path) -> None:
    config = {**loop_config, "names": ["numpy", "own"], "fail_once": 1, "marker": str(tmp_path / "failed")}
    tk.DataParallelTrainer(loops.log_shards, train_loop_config=config,
                           datasets={"numpy": np.arange(10), "own": loops.Squares(5)},
                           scaling_config=tk.ScalingConfig(num_workers=2),
                           run_config=make_run(failure_config=tk.FailureConfig(max_failures=1))).fit()

    shards = _shards(loop_config["log"])
    assert [e["rows"] for e in shards[(1, "numpy")]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [e["rows"] for e in shards[(1, "own")]] == [[0, 1, 4], [9, 16]]
    for name in ("numpy", "own"):  # the failed attempt had the same split
        assert [e["rows"] for e in shards[(0, name)]] == [e["rows"] for e in shards[(1, name)]]


def test_every_framework_trainer_takes_datasets() -> None:
    data = {"train": [1, 2, 3]}
    assert tk.torch.TorchTrainer(lambda: None, datasets=data).datasets == data
    for module, cls in (("xgboost", "XGBoostTrainer"), ("lightgbm", "LightGBMTrainer")):
        pytest.importorskip(module)
        trainer = getattr(__import__(f"trainkeep.{module}", fromlist=[cls]), cls)(lambda: None, datasets=data)
        assert trainer.datasets == data


# ---------------------------------------------------------------------------------------------- bad input


def _generator() -> Any:
    yield 1


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self) -> Any:
        return iter(range(3))


BAD = [
    ({"train": _generator()}, "datasets['train'] must be a sized indexable", "got a generator (it has no __len__"),
    ({"train": _Stream()}, "datasets['train'] must be a sized indexable", "an IterableDataset has no positions"),
    ({"val": {"a": 1}}, "datasets['val'] must be a sized indexable", "a mapping is indexed by key"),
    ({"train": {1, 2}}, "datasets['train'] must be", "got a set (it has no __getitem__)"),
    ({"train": "data.csv"}, "datasets['train'] must be", "(a string, not a dataset)"),
    ({"train": np.float64(3.0)}, "datasets['train'] must be", "numpy.float64"),
    ({"train": np.array(3)}, "datasets['train'] must be", "(len() of it fails)"),
    ({"train": lambda: [1, 2]}, "datasets['train'] is a function: a ray.data.Dataset or a function of no argument "
     "that returns one needs the Ray executor", "executor='ray'"),
    ({"train": loops.Squares}, "datasets['train'] is the class Squares, not a dataset: pass an instance", "accepted"),
    ({1: [1, 2]}, "datasets keys must be str", "got 1 (int)"),
    ([np.arange(3)], "datasets must be None or a dict of name -> dataset", "got list"),
]


@pytest.mark.parametrize(("given", "says", "also"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_dataset_that_cannot_be_sharded_is_a_type_error_at_construction_and_nothing_is_written(
        given, says, also, make_run, storage) -> None:
    with pytest.raises(tk.ConfigTypeError) as caught:
        tk.DataParallelTrainer(lambda: None, datasets=given, run_config=make_run())
    assert isinstance(caught.value, TypeError)
    assert says in str(caught.value) and also in str(caught.value)
    if isinstance(given, dict) and all(isinstance(k, str) for k in given):
        assert "numpy array, a list or tuple, a torch Tensor, a torch map-style Dataset" in str(caught.value)
    assert not os.path.exists(storage)


@pytest.mark.parametrize("to_split", ["hello", {}, ["train", 3]])
def test_datasets_to_split_is_all_or_a_list_of_names_as_in_ray(to_split) -> None:
    with pytest.raises(TypeError, match="`datasets_to_split` should be a 'all' or a list of strings"):
        tk.DataConfig(datasets_to_split=to_split)


def test_ray_data_execution_options_need_the_ray_executor(make_run, storage) -> None:
    with pytest.raises(tk.ConfigError, match=r"DataConfig\(execution_options=\{'x': 1\}\) sets Ray Data's execution, "
                                             "which only the Ray executor runs"):
        tk.DataParallelTrainer(lambda: None, datasets={"x": [1]}, dataset_config=tk.DataConfig(execution_options={"x": 1}),
                               run_config=make_run())
    with pytest.raises(tk.ConfigTypeError, match="dataset_config must be None or a trainkeep.DataConfig, got 'all'"):
        tk.DataParallelTrainer(lambda: None, dataset_config="all", run_config=make_run())
    assert not os.path.exists(storage)


@pytest.mark.parametrize("dataset", [[threading.Lock()], loops.LockedSquares(3)], ids=["sliced", "whole"])
def test_a_dataset_that_cannot_be_pickled_fails_fit_before_anything_is_written(dataset, make_run, storage) -> None:
    trainer = tk.DataParallelTrainer(lambda: None, datasets={"train": dataset}, run_config=make_run())
    with pytest.raises(tk.ConfigTypeError, match=r"datasets.* must be picklable with cloudpickle to reach the "
                                                 r"worker processes: TypeError: cannot pickle '_thread.lock' object"):
        trainer.fit()
    assert not os.path.exists(storage)


def test_an_unknown_name_is_ray_s_key_error_naming_the_datasets_and_is_not_retried(make_run, loop_config) -> None:
    trainer = tk.DataParallelTrainer(loops.ask_for, train_loop_config={**loop_config, "name": "validation"},
                                     datasets={"train": [1, 2], "val": [3]},
                                     run_config=make_run(failure_config=tk.FailureConfig(max_failures=2)))
    with pytest.raises(tk.WorkerGroupError) as caught:
        trainer.fit()
    failure = next(iter(caught.value.worker_failures.values()))
    assert isinstance(failure, tk.DatasetNotFoundError) and isinstance(failure, KeyError)
    assert str(failure) == ("Dataset shard for 'validation' not found: the trainer's datasets are ['train', 'val']. "
                            "Pass it in the trainer's datasets argument, e.g. DataParallelTrainer(..., "
                            "datasets={'validation': ...})")
    with open(loop_config["log"]) as f:
        assert f.read().count("start") == 1  # one attempt: the same call would fail again


def test_a_trainer_without_datasets_has_no_shard_to_give(make_run, loop_config) -> None:
    with pytest.raises(tk.WorkerGroupError, match="Dataset shard for 'train' not found: the trainer's datasets are"
                                                  r" \[\]"):
        tk.DataParallelTrainer(loops.ask_for, train_loop_config={**loop_config, "name": "train"},
                               run_config=make_run()).fit()


def test_outside_a_run_it_is_a_session_error_as_ray_s_runtime_error() -> None:
    with pytest.raises(tk.SessionError, match=r"trainkeep.get_dataset_shard\(\) works only inside a training "
                                              "function run by a trainer") as caught:
        tk.get_dataset_shard("train")
    assert isinstance(caught.value, RuntimeError)


def test_a_script_joined_with_init_has_no_datasets_and_is_told_why(tmp_path, monkeypatch) -> None:
    for name in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TORCHELASTIC_RESTART_COUNT", "TRAINKEEP_PORT"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():  # what torchrun sets for a world of one
        monkeypatch.setenv(name, value)
    tk.init(tk.RunConfig(name="run", storage_path=str(tmp_path / "storage")), port=port)
    try:
        with pytest.raises(tk.SessionError, match=r"returns a shard of a trainer's datasets=, and a script that "
                                                  r"joined its run with trainkeep.init\(\) .* has none"):
            tk.get_dataset_shard("train")
        tk.report({"step": 0})  # the session goes on
    finally:
        tk.shutdown()
