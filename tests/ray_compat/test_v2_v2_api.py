"""Port of ray-project/ray python/ray/train/v2/tests/test_v2_api.py (Ray 2.60), imports swapped to trainkeep.

Ray answers its removed V1 arguments (``FailureConfig(fail_fast=)``, ``RunConfig(verbose=)``,
``ScalingConfig(trainer_resources=)``) and ``Trainer.restore`` / ``can_restore`` with a DeprecationWarning
raised as an error; trainkeep never had them, so Python's own TypeError / AttributeError says so: pinned in
test_v2_differences.py. ``test_train_v2_import`` (the RAY_TRAIN_V2_ENABLED switch) has nothing to port.
"""

from __future__ import annotations

import cloudpickle
import pytest

import trainkeep
from trainkeep import FailureConfig, RunConfig, ScalingConfig


@pytest.mark.parametrize("make", [FailureConfig, RunConfig, ScalingConfig], ids=lambda f: f.__name__)
def test_default_configs_construct(make):
    """Covers test_api_configs (the cases that must not raise)."""
    make()


def test_total_resources_with_cpus_and_gpus_per_worker():
    """Covers test_scaling_config_total_resources (which forgot its assert; this one asserts)."""
    config = ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 1, "GPU": 1})
    assert config.total_resources == {"CPU": 2, "GPU": 2}


def test_trainers_captured_by_a_shipped_function_deserialize():
    """Covers test_serialized_imports: a function that captures the framework trainers pickles and runs."""
    from trainkeep.lightgbm import LightGBMTrainer
    from trainkeep.torch import TorchTrainer
    from trainkeep.xgboost import XGBoostTrainer

    def task():
        return (TorchTrainer, XGBoostTrainer, LightGBMTrainer, trainkeep.DataParallelTrainer)

    shipped = cloudpickle.loads(cloudpickle.dumps(task))
    assert shipped() == (TorchTrainer, XGBoostTrainer, LightGBMTrainer, trainkeep.DataParallelTrainer)
