"""Port of the Python snippet of ray-project/ray doc/source/train/user-guides/monitoring-logging.rst (Ray 2.60),
imports swapped to trainkeep.

"Only the results from rank 0 worker will be used. However, in order to ensure consistency, ``train.report()``
has to be called on each worker." The PyTorch tab's loop reports ``{"result": ...}`` each epoch; here every rank
reports a different value, so what the driver keeps shows whose it is. The Lightning tab is ported by
tests/frameworks; the torchmetrics examples are left out (see test_doc_getting_started_pytorch.py).
"""

from __future__ import annotations

import trainkeep as train


def train_func(config):
    rank = train.get_context().get_world_rank()
    for i in range(config["num_epochs"]):
        result = 100 * rank + i  # stands for model.train(...)
        train.report({"result": result})


def test_only_rank_zero_s_results_are_used(tmp_path):
    result = train.DataParallelTrainer(train_func, train_loop_config={"num_epochs": 3},
                                       scaling_config=train.ScalingConfig(num_workers=2),
                                       run_config=train.RunConfig(storage_path=str(tmp_path))).fit()
    assert list(result.metrics_dataframe["result"]) == [0, 1, 2]
    assert result.metrics["result"] == 2
    assert result.checkpoint is None and result.best_checkpoints == []
