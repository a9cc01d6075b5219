"""Port of ray-project/ray python/ray/train/v2/tests/test_config.py (Ray 2.60), imports swapped to trainkeep.

TPU, ``label_selector`` and ``accelerator_type`` are Ray features trainkeep does not have; they are pinned in
test_v2_differences.py.
"""

from __future__ import annotations

import pyarrow.fs
import pytest

from trainkeep import RunConfig, ScalingConfig


def test_total_resources_count_every_worker_with_gpus():
    """Covers test_scaling_config_validation (its total_resources part)."""
    config = ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 1})
    assert config.total_resources == {"CPU": 2, "GPU": 2}


def test_a_gpu_resource_without_use_gpu_is_refused():
    """Covers test_scaling_config_validation (``use_gpu`` False with a GPU resource is a ValueError)."""
    with pytest.raises(ValueError, match="`use_gpu` is False but `GPU` was found in"):
        ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"GPU": 1})


def test_the_repr_of_a_run_config_with_a_pyarrow_filesystem_works():
    """Covers test_storage_filesystem_repr."""
    config = RunConfig(storage_filesystem=pyarrow.fs.S3FileSystem(region="us-east-1", anonymous=True))
    assert repr(config).startswith("RunConfig(")


def test_one_worker_by_default_and_its_resources():
    """Covers test_scaling_config_default_workers."""
    config = ScalingConfig()
    assert config.num_workers == 1
    assert config.total_resources == {"CPU": 1}
    gpu = ScalingConfig(use_gpu=True)
    assert gpu.num_workers == 1
    assert gpu.total_resources == {"GPU": 1}
