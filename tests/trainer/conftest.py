"""Fixtures of the trainer tests: a storage root, a run config factory, and a per-test config for the loops."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trainkeep as tk


@pytest.fixture
def storage(tmp_path: Path) -> str:
    """Return the storage path of the test's runs."""
    return str(tmp_path / "storage")


@pytest.fixture
def make_run(storage: str) -> Callable[..., tk.RunConfig]:
    """Return a factory of RunConfigs for a run named "run" (by default) under the test's storage path."""

    def make(name: str | None = "run", **kwargs: Any) -> tk.RunConfig:
        return tk.RunConfig(name=name, storage_path=storage, **kwargs)

    return make


@pytest.fixture
def loop_config(tmp_path: Path) -> dict[str, Any]:
    """Return the base config of ``trainer_loops`` functions: a log file and a temp dir for source files."""
    tmp = tmp_path / "sources"
    tmp.mkdir()
    return {"log": str(tmp_path / "log.txt"), "tmp": str(tmp), "epochs": 3}


def checkpoint_dirs(run_path: str) -> list[str]:
    """Return the names of the directories in a run that are not ours (checkpoints and debris)."""
    return sorted(n for n in os.listdir(run_path) if os.path.isdir(os.path.join(run_path, n)) and n != ".trainkeep")


@pytest.fixture
def list_checkpoint_dirs() -> Callable[[str], list[str]]:
    return checkpoint_dirs


@pytest.fixture
def s3_fs(moto_endpoint: str, tmp_path: Path) -> Any:
    """Return an s3fs filesystem on the moto server, with a fresh bucket named after the test."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_endpoint,
                           client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
    bucket = f"trainer-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=bucket)
    fs.bucket_name = bucket
    return fs
