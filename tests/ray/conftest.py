"""Fixtures of the Ray executor tests: one simulated three-node Ray cluster on loopback, and S3 storage.

The cluster is module-scoped: starting three raylets costs tens of seconds on a small machine, so the tests of
a module share one. Every Ray process binds 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray
from replacing the loopback node address with a routable one).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NODE_ARGS = {"node_ip_address": "127.0.0.1", "num_cpus": 2, "include_dashboard": False,
             "object_store_memory": 80 * 1024 * 1024}
# a lost node is noticed within about two seconds, not Ray's default half minute
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 0}
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """Start a Ray cluster of three nodes (a head and two workers, 2 CPUs each) on 127.0.0.1 and connect."""
    # Ray's socket paths live under its temp dir and must stay under 108 bytes: keep that dir short
    tmp = tempfile.mkdtemp(prefix="tkr", dir="/tmp")
    os.makedirs(os.path.join(tmp, "ray"))
    patch = pytest.MonkeyPatch()
    for key, value in {**RAY_ENV, "RAY_TMPDIR": tmp}.items():
        patch.setenv(key, value)
    already = "ray" in sys.modules  # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if already and ray_constants.ENABLE_RAY_CLUSTER:
        pytest.fail("ray was imported before the ray_cluster fixture set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: "
                    "it would bind beyond loopback")
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "temp_dir": os.path.join(tmp, "ray"), "_system_config": SYSTEM_CONFIG})
    try:
        for _ in range(2):
            cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="WARNING",
                 log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        patch.undo()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    """Return an s3fs filesystem on the moto server with a fresh bucket (its name in ``fs.bucket_name``)."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_endpoint,
                           client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
    bucket = f"ray-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=bucket)
    fs.bucket_name = bucket
    return fs


@pytest.fixture
def log_path(tmp_path: Path) -> str:
    return str(tmp_path / "log.txt")
