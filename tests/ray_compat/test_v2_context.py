"""Port of ray-project/ray python/ray/train/v2/tests/test_context.py (Ray 2.60), imports swapped.

Ray's test builds its ``LocalTrainContext`` (the context of Ray's ``num_workers=0`` local mode) by hand; the
user-visible part is what ``get_context()`` answers inside a training function, shown here in a real run of two
workers. Local mode itself is not supported (pinned in test_v2_differences.py).
"""

from __future__ import annotations

from trainkeep import DataParallelTrainer, RunConfig, ScalingConfig, get_context, report


def test_context_getters_inside_a_run(tmp_path):
    """Covers test_local_train_context_creation and test_context_isolation_without_ray: the getters."""

    def train_fn():
        context = get_context()
        storage = context.get_storage()
        report({"experiment": context.get_experiment_name(), "world_size": context.get_world_size(),
                "world_rank": context.get_world_rank(), "local_rank": context.get_local_rank(),
                "local_world_size": context.get_local_world_size(), "node_rank": context.get_node_rank(),
                "has_storage": storage is not None})
        assert context.get_local_rank() == context.get_world_rank()

    result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                                 run_config=RunConfig(name="context_test", storage_path=str(tmp_path))).fit()
    assert result.metrics == {"experiment": "context_test", "world_size": 2, "world_rank": 0, "local_rank": 0,
                              "local_world_size": 2, "node_rank": 0, "has_storage": True}


def test_report_through_the_context_functions(tmp_path):
    """Covers test_local_context_report_functionality: a report with metrics and no checkpoint is recorded."""

    def train_fn():
        report({"loss": 0.5, "accuracy": 0.95})

    result = DataParallelTrainer(train_fn, run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.metrics == {"loss": 0.5, "accuracy": 0.95}
    assert result.checkpoint is None
