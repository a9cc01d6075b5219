"""The training loop of the trainer fault tests, importable by name in the worker processes (no pytest here).

Each epoch writes one small checkpoint file and reports it with ``checkpoint_upload_mode=ASYNC``, so the files
are handed over to the worker's background uploader, which moves them into the run.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import trainkeep as tk


def train(config: dict[str, Any]) -> int:
    """Resume from the latest checkpoint, then report one ASYNC checkpoint per epoch; return the last epoch."""
    start = 0
    checkpoint = tk.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d, open(os.path.join(d, "state.json")) as f:
            start = json.load(f)["epoch"] + 1
    for epoch in range(start, config["epochs"]):
        d = tempfile.mkdtemp(prefix=f"src_e{epoch}_", dir=config["tmp"])
        with open(os.path.join(d, "state.json"), "w") as f:
            json.dump({"epoch": epoch, "weights": [epoch] * 64}, f)
        tk.report({"epoch": epoch, "loss": 1.0 / (epoch + 1)}, checkpoint=tk.Checkpoint.from_directory(d),
                  checkpoint_upload_mode=tk.CheckpointUploadMode.ASYNC)
    return config["epochs"] - 1
