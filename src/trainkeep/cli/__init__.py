"""The ``trainkeep`` command: inspect, verify, prune and plot runs from a shell (see docs/cli.md)."""

from __future__ import annotations

from trainkeep.cli.app import cli, main

__all__ = ["cli", "main"]
