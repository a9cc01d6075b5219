"""Fixtures of the launcher tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """Return a directory for the ranks' logs."""
    path = tmp_path / "out"
    path.mkdir()
    yield path
