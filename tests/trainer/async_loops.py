"""Training functions for tests/trainer/test_async_handover.py, importable by name in the worker processes."""

from __future__ import annotations

import os
import time
from typing import Any

from trainer_loops import write_checkpoint

import trainkeep as tk


def rank_1_runs_ahead(config: dict[str, Any]) -> None:
    """Rank 1 reports two ASYNC checkpoints, then leaves a marker; rank 0 reports only once it sees the marker.

    Rank 1's files go where rank 0's share leaves them, decided when rank 0 reaches the round, so the marker
    appears only if an ASYNC report() returns before the driver answers.
    """
    rank = tk.get_context().get_world_rank()
    marker = os.path.join(config["tmp"], "rank_1_ahead")
    if rank == 1:
        for epoch in range(2):
            tk.report({"epoch": epoch}, checkpoint=write_checkpoint(config, 1, epoch),
                      checkpoint_upload_mode=tk.CheckpointUploadMode.ASYNC)
        open(marker, "w").close()
        return
    deadline = time.monotonic() + config["wait_s"]
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank 1 did not get past its ASYNC reports within {config['wait_s']} s")
        time.sleep(0.01)
    for epoch in range(2):
        tk.report({"epoch": epoch})


def async_without_background_receive(config: dict[str, Any]) -> None:
    """Report ASYNC checkpoints from both ranks with a session that reads its connection itself."""
    from trainkeep._internal.trainer import session

    assert session._session is not None
    session._session.background_receive = False  # as a Session subclass that reads the connection would
    rank = tk.get_context().get_world_rank()
    for epoch in range(3):
        tk.report({"epoch": epoch}, checkpoint=write_checkpoint(config, rank, epoch),
                  checkpoint_upload_mode=tk.CheckpointUploadMode.ASYNC)
