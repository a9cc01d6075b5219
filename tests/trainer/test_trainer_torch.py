"""TorchTrainer: DDP over gloo with 2 real workers; a run resumed after a crash equals an uninterrupted one."""

from __future__ import annotations

import json
import os

import pytest
import trainer_loops as loops
from trainer_loops import read_log

import trainkeep as tk


@pytest.mark.slow
def test_ddp_resumed_after_a_crash_equals_an_uninterrupted_run(loop_config, make_run, tmp_path):
    torch = pytest.importorskip("torch")
    scaling = tk.ScalingConfig(num_workers=2)
    straight = tk.torch.TorchTrainer(loops.ddp_train, train_loop_config={**loop_config, "epochs": 4},
                                     scaling_config=scaling, run_config=make_run("straight")).fit()
    crash_config = {**loop_config, "epochs": 4, "log": str(tmp_path / "crash.txt"),
                    "fail": {"rank": 1, "epoch": 2, "how": "sigkill", "once": str(tmp_path / "crashed")}}
    resumed = tk.torch.TorchTrainer(loops.ddp_train, train_loop_config=crash_config, scaling_config=scaling,
                                    run_config=make_run("crashed", failure_config=tk.FailureConfig(max_failures=1))).fit()

    assert os.path.exists(tmp_path / "crashed")  # the crash did happen, and the run went on
    assert len([line for line in read_log(crash_config["log"]) if line.startswith("facts [0,")]) == 2
    assert straight.return_value.keys() == resumed.return_value.keys()
    for key, value in straight.return_value.items():
        assert torch.equal(value, resumed.return_value[key]), key
    assert resumed.metrics_dataframe["loss"].tolist() == straight.metrics_dataframe["loss"].tolist()
    with resumed.checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, "state.pt"))
    assert saved["epoch"] == 3 and all(torch.equal(v, straight.return_value[k]) for k, v in saved["model"].items())

    # the process group and the helpers, as each rank saw them in the uninterrupted run
    facts = sorted(json.loads(line[len("facts "):]) for line in read_log(loop_config["log"]))
    shards = [set(f.pop()) for f in facts]
    assert facts == [[r, str(r), "2", str(r), "2", "127.0.0.1", "gloo", r, "DistributedDataParallel",
                      "DistributedSampler", "cpu"] for r in (0, 1)]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(96))


def test_prepare_helpers_work_outside_a_run_as_a_single_process():
    torch = pytest.importorskip("torch")
    from trainkeep.torch import get_device, prepare_data_loader, prepare_model

    model = torch.nn.Linear(2, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=2)
    assert prepare_model(model) is model  # world size 1: no DDP wrapper
    assert prepare_data_loader(loader) is loader
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="parallel_strategy must be 'ddp' or None, got 'zero'"):
        prepare_model(model, parallel_strategy="zero")
